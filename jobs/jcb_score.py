"""``ray job submit --working-dir . -- python jobs/jcb_score.py --config configs/score_jcb.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("jcb-score"))
