"""Median CPU milliseconds per scan for ``predict`` and ``grad_cam``, batch 1, for every registered
model that has shipped weights. ``predict`` is the whole call the app makes: the model, calibration, the
familiarity score and the training-data check; the scan is a BUSI scan mirrored left to right, which the
training-data index does not hold, so that check does its full search as for a new patient's scan.

    python benchmarks/latency.py --runs 50 --threads 2
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from imagemasknet.data.busi import load_busi
from imagemasknet.data.scans import read_scan
from imagemasknet.inference.predictor import Predictor, available_models, training_data_index


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
    original = read_scan(case.image_path)
    scan = dataclasses.replace(original, pixels=original.pixels[:, ::-1].copy(), rgb=original.rgb[:, ::-1].copy())
    print(f"scan {case.id}, mirrored ({scan.pixels.shape[1]}×{scan.pixels.shape[0]}), {args.runs} runs, "
          f"{args.threads} threads, CPU")
    print("| model | predict (ms, median) | grad_cam (ms, median) |\n|---|---|---|")
    training_data_index()  # built (or read from its cache) before the clock starts, as the app does
    for name in available_models():
        predictor = Predictor.shipped(name, device="cpu")
        predict = median_ms(lambda: predictor.predict(scan), args.runs)
        cam = median_ms(lambda: predictor.grad_cam(scan, "malignant"), args.runs)
        print(f"| {name} | {predict:.1f} | {cam:.1f} |")


if __name__ == "__main__":
    main()
