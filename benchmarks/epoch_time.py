"""Seconds per training epoch of each architecture on this machine's CPU (fold 0, full training set,
each preset's own augmentation and batch size; the per-epoch held-out evaluation is not counted).

    python benchmarks/epoch_time.py --threads 2                       # and --precision bf16
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from imagemasknet.core.files import read_json
from imagemasknet.training.config import PRECISIONS, preset
from imagemasknet.training.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", nargs="+", default=["lesion-resunet", "study-m1", "study-m2"])
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"| preset | architecture | seconds per epoch (CPU, {args.threads} threads, {args.precision}) | epochs in the preset | minutes per fold |")
    print("|---|---|---|---|---|")
    for name in args.presets:
        with tempfile.TemporaryDirectory() as folder:
            config = preset(name, epochs=1, fold=0, precision=args.precision, out_dir=str(Path(folder) / "run"))
            full_epochs = preset(name).epochs
            run = train(config, progress=False)
            seconds = read_json(run / "history.json")[0]["seconds"]
            print(f"| {name} | {config.arch} | {seconds:.0f} | {full_epochs} | {seconds * full_epochs / 60:.0f} |", flush=True)


if __name__ == "__main__":
    main()
