"""``ray job submit --working-dir . -- python jobs/stats_text.py --config configs/stats_text.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("stats-text"))
