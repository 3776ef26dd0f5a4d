"""``ray job submit --working-dir . -- python jobs/label_findings.py --config configs/label_findings.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("label-findings"))
