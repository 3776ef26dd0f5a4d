"""``ray job submit --working-dir . -- python jobs/train_cxr_encoder.py --config configs/train_cxr_encoder.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("train-cxr-encoder"))
