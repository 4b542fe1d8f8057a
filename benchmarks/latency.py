"""Median CPU milliseconds per scan for ``predict`` and ``grad_cam``, batch 1, for every registered
model that has shipped weights.

    python benchmarks/latency.py --runs 50 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from imagemasknet.data import load_busi
from imagemasknet.predict import Predictor, available_models, read_scan


def median_ms(call, runs: int) -> float:
    call()  # warm-up: first call allocates
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    case = next(c for c in load_busi().cases if c.label == "malignant")
    scan = read_scan(case.image_path)
    print(f"scan {case.id} ({scan.pixels.shape[1]}×{scan.pixels.shape[0]}), {args.runs} runs, {args.threads} threads, CPU")
    print("| model | predict (ms, median) | grad_cam (ms, median) |\n|---|---|---|")
    for name in available_models():
        predictor = Predictor.shipped(name, device="cpu")
        predict = median_ms(lambda: predictor.predict(scan), args.runs)
        cam = median_ms(lambda: predictor.grad_cam(scan, "malignant"), args.runs)
        print(f"| {name} | {predict:.1f} | {cam:.1f} |")


if __name__ == "__main__":
    main()
