"""``ray job submit --working-dir . -- python jobs/text_stats.py --config configs/stats_text.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("text-stats"))
