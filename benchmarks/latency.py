"""Median CPU milliseconds per scan for ``predict`` and ``grad_cam``, batch 1, for every registered
model that has shipped weights. ``predict`` is the whole call the app makes: the model, calibration, the
familiarity score and the training-data check; the scan is a BUSI scan mirrored left to right, which the
training-data index does not hold, so that check does its full search as for a new patient's scan.

    python benchmarks/latency.py --runs 50 --threads 2 --json benchmarks/results/latency-cpu.json
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from imagemasknet.core.files import write_json
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
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    case = next(c for c in load_busi().cases if c.label == "malignant")
    original = read_scan(case.image_path)
    scan = dataclasses.replace(original, pixels=original.pixels[:, ::-1].copy(), rgb=original.rgb[:, ::-1].copy())
    print(f"scan {case.id}, mirrored ({scan.pixels.shape[1]}×{scan.pixels.shape[0]}), {args.runs} runs, "
          f"{args.threads} threads, CPU")
    print("| model | predict (ms, median) | grad_cam (ms, median) |\n|---|---|---|")
    figures = {}
    for name in available_models():
        predictor = Predictor.shipped(name, device="cpu")
        training_data_index(predictor.training_sources)  # built (or read from its cache) before the clock, as the app does
        predict = median_ms(lambda: predictor.predict(scan), args.runs)
        cam = median_ms(lambda: predictor.grad_cam(scan, "malignant"), args.runs)
        print(f"| {name} | {predict:.1f} | {cam:.1f} |")
        figures[name] = {"predict_ms": round(predict, 1), "grad_cam_ms": round(cam, 1)}
    if args.json:
        write_json(args.json, {"scan": case.id, "mirrored": True, "runs": args.runs, "threads": args.threads,
                               "device": "cpu", "median_ms": figures})


if __name__ == "__main__":
    main()
