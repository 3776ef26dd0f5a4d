"""``ray job submit --working-dir . -- python jobs/eval_grounding.py --config configs/eval_grounding.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("eval-grounding"))
