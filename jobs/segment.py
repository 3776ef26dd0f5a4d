"""``ray job submit --working-dir . -- python jobs/segment.py --config configs/segment.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("segment"))
