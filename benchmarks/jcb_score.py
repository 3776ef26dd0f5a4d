"""Scoring speed of J-ClinicalBench, per setting, on the released generated/ files.

    python benchmarks/jcb_score.py [--generated ../shared/data/j-clinicalbench/generated]
                                   [--model gpt-4o] [--shot one_shot] [--bootstrap 1000]

In-process, no Ray: for each setting, the seconds to read and score one released file
(per-row statistics: ROUGE-L tokenisation with MeCab/IPADIC dominates the generation
tasks) and to run the bootstrap over the stored per-row statistics, plus items/s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "data" / "j-clinicalbench" / "generated"


def main(argv=None) -> int:
    from ctray.tasks.jcb.metrics import bootstrap_ci, score_records
    from ctray.tasks.jcb.registry import all_settings
    from ctray.tasks.jcb.release import read_records

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generated", default=str(DEFAULT))
    p.add_argument("--model", default="gpt-4o")
    p.add_argument("--shot", default="one_shot")
    p.add_argument("--bootstrap", type=int, default=1000)
    args = p.parse_args(argv)
    root = Path(args.generated)
    if not root.is_dir():
        print(f"no generated/ tree at {root}")
        return 2
    print(f"{'setting':16} {'items':>6} {'score_s':>8} {'items/s':>9} {'boot_s':>7} headline")
    total = 0.0
    for setting in all_settings().values():
        path = root / setting.group / setting.name / args.model / f"{args.shot}.json"
        if not path.exists():
            continue
        t0 = time.perf_counter()
        records = read_records(path)
        result, stats = score_records(records, setting)
        t1 = time.perf_counter()
        bootstrap_ci(stats, setting, resamples=args.bootstrap)
        t2 = time.perf_counter()
        total += t2 - t0
        print(f"{setting.name:16} {len(records):6d} {t1 - t0:8.2f} {len(records) / (t1 - t0):9.0f} "
              f"{t2 - t1:7.2f} {setting.headline_value(result):.4f}")
    print(f"total {total:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
