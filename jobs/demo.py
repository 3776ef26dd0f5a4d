"""``ray job submit --working-dir . -- python jobs/demo.py --config configs/demo.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("demo"))
