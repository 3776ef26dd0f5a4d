"""``ray job submit --working-dir . -- python jobs/label_cxr.py --config configs/label_cxr.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("label-cxr"))
