"""Exact spectrum of a factored update vs dense svdvals: a rank-16 update of a 4096x4096 layer.

Ours: QR of both factors, then the SVD of a 16x16 core (lora_explorer.analysis.singular_values).
Dense: torch.linalg.svdvals of the reconstructed 4096x4096 matrix. Same dtype for both; the
values must agree. Target: >= 50x faster.

Run:   .venv/bin/python benchmarks/spectrum_speed.py [--size 4096] [--rank 16] [--dtype float32] [--device cpu]
Writes spectrum_speed.json to the results folder (benchmarks/common.py).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lora_explorer.analysis import Update, singular_values  # noqa: E402

from benchmarks.common import write_result  # noqa: E402

TARGET = 50  # times faster than dense svdvals


def best_time(fn, repeats, device):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(args.size, args.rank, generator=generator, dtype=dtype).to(device)
    right = (torch.randn(args.rank, args.size, generator=generator, dtype=dtype) / args.size ** 0.5).to(device)
    best_time(lambda: torch.linalg.svdvals(left @ right[:, :64]), 1, device)  # first call: kernels load (on CUDA)
    factored_s, ours = best_time(lambda: singular_values(Update(left=left, right=right), dtype=dtype), 5, device)
    dense_s, dense = best_time(lambda: torch.linalg.svdvals(left @ right), 1, device)
    ours, dense = ours.cpu(), dense.cpu()
    difference = float(((ours - dense[: args.rank]).abs() / dense[: args.rank]).max())
    result = {"size": args.size, "rank": args.rank, "dtype": args.dtype, "factored_s": factored_s,
              "dense_s": dense_s, "speedup": dense_s / factored_s, "max_rel_diff_top_sigma": difference,
              "target": TARGET}
    print(f"factored {factored_s * 1000:.2f} ms, dense {dense_s:.2f} s: {result['speedup']:.0f}x faster "
          f"(target >= {TARGET}x); top-{args.rank} sigma agree to {difference:.1e} relative")
    write_result("spectrum_speed", result, args.device)


if __name__ == "__main__":
    main()
