"""``ray job submit --working-dir . -- python jobs/train_llm_labeler.py --config configs/train_cxr_labeler.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("train-llm-labeler"))
