"""``ray job submit --working-dir . -- python jobs/findings_eval.py --config configs/eval_findings.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("findings-eval"))
