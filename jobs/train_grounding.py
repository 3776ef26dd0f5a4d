"""``ray job submit --working-dir . -- python jobs/train_grounding.py --config configs/train_grounding.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("train-grounding"))
