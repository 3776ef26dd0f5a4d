"""``ray job submit --working-dir . -- python jobs/jcb_generate.py --config configs/generate_jcb.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("jcb-generate"))
