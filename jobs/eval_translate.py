"""``ray job submit --working-dir . -- python jobs/eval_translate.py --config configs/eval_translate.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("eval-translate"))
