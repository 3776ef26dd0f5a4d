"""``ray job submit --working-dir . -- python jobs/eval_cxr.py --config configs/eval_cxr.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("eval-cxr"))
