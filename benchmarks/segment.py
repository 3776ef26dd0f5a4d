"""Sliding-window segmentation cost per volume: seconds and peak memory.

    python benchmarks/segment.py                                  # 512x512x300, CPU
    python benchmarks/segment.py --shape 256 256 96               # quick run
    python benchmarks/segment.py --device cuda --roi 96 128 --sw-batch 4 16

One phantom (``make_phantom``, HU) goes through the ``segment`` path: the project
preprocessing (window, axial resize to the phantom's own axial size, so no
resampling cost), ``predict_logits`` (MONAI sliding_window_inference, Gaussian
blending, overlap 0.25) with the default ``TextFiLMUNet`` width (random weights:
the cost does not depend on them) and one random 768-d prompt, threshold, and
``mask_to_original``. Every (ROI, sw_batch_size) pair runs in its own child
process, so the peak resident memory it reports (``ru_maxrss``) is that
configuration's alone; ``base`` is the RSS before inference (volume, model,
preprocessed tensor), ``peak`` the maximum during the whole child. On CUDA the
peak allocated GPU memory is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def n_windows(shape, roi: int, overlap: float) -> int:
    """Windows sliding_window_inference visits (its scan interval: roi * (1 - overlap))."""
    from monai.data.utils import dense_patch_slices

    size = [max(s, roi) for s in shape]  # smaller sides are padded up to the ROI
    interval = [max(int(roi * (1 - overlap)), 1) if s > roi else 1 for s in size]
    return len(dense_patch_slices(size, (roi,) * 3, interval))


def run_one(args) -> dict:
    import torch

    from ctray.tasks.grounding.inference import mask_to_original, predict_logits
    from ctray.tasks.grounding.model import TextFiLMUNet
    from ctray.tasks.grounding.preprocess import PreprocessConfig, build_preprocess, preprocess_volume

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    volume = np.load(args.volume)
    affine = np.load(args.volume.replace(".npy", "_affine.npy"))
    device = torch.device(args.device)
    model = TextFiLMUNet(args.text_dim, features=tuple(args.features)).eval()
    emb = torch.randn(args.prompts, args.text_dim)
    transform = build_preprocess(PreprocessConfig(axial_size=tuple(volume.shape[:2])))
    roi = (args.roi_one,) * 3
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # Warm-up on one window: first-call kernel selection is not per-volume cost.
    predict_logits(model, torch.zeros(1, 1, *roi), emb, roi, 1, sw_device=device)
    base = _rss_mb()
    t0 = time.perf_counter()
    pre = preprocess_volume(volume, affine, transform=transform)
    t1 = time.perf_counter()
    logits = predict_logits(model, pre, emb, roi, args.sw_batch_one, sw_device=device,
                            overlap=args.overlap)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    masks = (logits > 0).to(torch.uint8).numpy()
    restored = mask_to_original(masks, pre, transform)
    t3 = time.perf_counter()
    out = {"roi": roi, "sw_batch_size": args.sw_batch_one, "preprocess_s": t1 - t0,
           "sliding_window_s": t2 - t1, "to_original_s": t3 - t2, "total_s": t3 - t0,
           "base_rss_mb": base, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "mask_shape": list(restored.shape), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    p.add_argument("--roi", type=int, nargs="+", default=[64, 96], help="cubic ROI sides")
    p.add_argument("--sw-batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--features", type=int, nargs=6, default=[16, 16, 32, 64, 128, 16])
    p.add_argument("--text-dim", type=int, default=768)
    p.add_argument("--prompts", type=int, default=1)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    # Child-process arguments.
    p.add_argument("--volume", help=argparse.SUPPRESS)
    p.add_argument("--roi-one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--sw-batch-one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.volume:
        print(json.dumps(run_one(args)))
        return

    from ctray.tasks.grounding.phantoms import make_phantom

    import torch

    t = time.perf_counter()
    volume, affine, _ = make_phantom(tuple(args.shape), seed=0)
    print(f"phantom {tuple(args.shape)} made in {time.perf_counter() - t:.1f}s; device "
          f"{args.device}, torch threads {args.threads or torch.get_num_threads()}, "
          f"features {tuple(args.features)}, {args.prompts} prompt(s), overlap {args.overlap}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "volume.npy")
        np.save(path, volume)
        np.save(path.replace(".npy", "_affine.npy"), affine)
        del volume
        header = (f"{'roi':>12} {'sw_batch':>8} {'windows':>7} {'s/volume':>9} {'window s':>9} "
                  f"{'prep s':>7} {'back s':>7} {'base MB':>8} {'peak MB':>8}"
                  + (f" {'GPU MB':>8}" if args.device.startswith("cuda") else ""))
        print(header)
        for roi in args.roi:
            for sw in args.sw_batch:
                cmd = [sys.executable, __file__, "--volume", path, "--roi-one", str(roi),
                       "--sw-batch-one", str(sw), "--features", *map(str, args.features),
                       "--text-dim", str(args.text_dim), "--prompts", str(args.prompts),
                       "--overlap", str(args.overlap), "--device", args.device,
                       "--threads", str(args.threads)]
                res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
                if res.returncode:
                    print(f"roi {roi} sw_batch {sw}: failed\n{res.stderr[-2000:]}")
                    continue
                r = json.loads(res.stdout.strip().splitlines()[-1])
                line = (f"{'x'.join(map(str, r['roi'])):>12} {sw:>8} "
                        f"{n_windows(args.shape, roi, args.overlap):>7} {r['total_s']:>9.2f} "
                        f"{r['sliding_window_s']:>9.2f} {r['preprocess_s']:>7.2f} "
                        f"{r['to_original_s']:>7.2f} {r['base_rss_mb']:>8.0f} {r['peak_rss_mb']:>8.0f}")
                if "peak_gpu_mb" in r:
                    line += f" {r['peak_gpu_mb']:>8.0f}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
