"""``ray job submit --working-dir . -- python jobs/serve_bench.py --config configs/bench_serve.yaml``"""

import sys

from ctray.cli import job_entrypoint

if __name__ == "__main__":
    sys.exit(job_entrypoint("serve-bench"))
