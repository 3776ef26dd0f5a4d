"""``ray job submit --working-dir . -- python jobs/eval_leavs.py --config configs/eval_leavs.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("eval-leavs"))
