"""``ray job submit --working-dir . -- python jobs/train_findings_labeler.py --config configs/train_findings_labeler.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("train-findings-labeler"))
