"""The pretrained encoder's costs beside lesion-resunet's, measured in one run on this machine: seconds
per training step (16 real BUSI training scans through the training augmentation, the loss, backward and
AdamW, exactly as ``train`` runs them), and milliseconds per scan for ``Predictor.predict`` and
``Predictor.grad_cam`` at batch 1. The configurations take turns (A B C … A B C …), so a change in the
machine's load falls on all of them alike.

    python benchmarks/speed.py --threads 2 --rounds 5 --steps 6 --json benchmarks/results/speed-cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from latency import median_ms

from imagemasknet.core.files import write_json
from imagemasknet.data.busi import load_busi
from imagemasknet.data.dataset import load_arrays
from imagemasknet.data.scans import read_scan
from imagemasknet.data.splits import load_folds
from imagemasknet.inference.predictor import Predictor
from imagemasknet.models import build_model, get_spec
from imagemasknet.models.card import ModelCard
from imagemasknet.models.weights import save_weights
from imagemasknet.training.config import preset
from imagemasknet.training.step import ScanDataset, TrainingStep

# (label, preset, overrides): the two shipped recipes as they train, and what freezing and bf16 buy.
CONFIGURATIONS = (
    ("lesion-resunet, bf16", "lesion-resunet", {"precision": "bf16"}),
    ("lesion-effnet-lite0, bf16, blocks 0-2 frozen (the preset)", "lesion-effnet-lite0", {"precision": "bf16"}),
    ("lesion-effnet-lite0, bf16, nothing frozen", "lesion-effnet-lite0", {"precision": "bf16", "frozen_blocks": 0}),
    ("lesion-effnet-lite0, fp32, blocks 0-2 frozen", "lesion-effnet-lite0", {"precision": "fp32"}),
)


class Trainer:
    """One configuration's model, optimizer and batches, ready to time a step."""

    def __init__(self, name: str, overrides: dict, arrays, batch_size: int):
        config = preset(name, **overrides)
        self.spec = get_spec(config.arch)
        model = build_model(config.arch, pretrained=True, image_size=config.image_size)
        if config.frozen_blocks:
            model.freeze_encoder(config.frozen_blocks)
        if config.precision == "bf16":
            model = model.to(memory_format=torch.channels_last)
        self.model = model.train()
        self.step = TrainingStep(model, self.spec, config)
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                           weight_decay=config.weight_decay)
        loader = torch.utils.data.DataLoader(ScanDataset(arrays, config.augment, config.image_size), batch_size=batch_size,
                                             shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True)
        self.batches = iter(loader)
        self.loader = loader
        self.mask_generator = torch.Generator().manual_seed(0)

    def time_step(self) -> float:
        """Seconds for one step, augmentation of its batch included."""
        start = time.perf_counter()
        try:
            images, masks, y, _ = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            images, masks, y, _ = next(self.batches)
        given = torch.rand(len(y), generator=self.mask_generator) < 0.5
        loss, _ = self.step(images, masks, y, "mask", given)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def latency_ms(predictor: Predictor, scan, runs: int) -> dict[str, float]:
    return {"predict_ms": median_ms(lambda: predictor.predict(scan), runs),
            "grad_cam_ms": median_ms(lambda: predictor.grad_cam(scan, "malignant"), runs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="turns each configuration takes")
    parser.add_argument("--steps", type=int, default=6, help="training steps timed per turn (after one warm-up step)")
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_busi()
    train_ids = [i for k, fold in enumerate(load_folds()) if k != 0 for i in fold]
    arrays = load_arrays(data, 256).take(train_ids)
    trainers = {label: Trainer(name, overrides, arrays, args.batch_size) for label, name, overrides in CONFIGURATIONS}
    steps: dict[str, list[float]] = {label: [] for label in trainers}
    for round_ in range(args.rounds):
        for label, trainer in trainers.items():
            trainer.time_step()  # warm-up after the other configurations ran
            steps[label] += [trainer.time_step() for _ in range(args.steps)]
        print(f"round {round_ + 1}/{args.rounds}: " + "; ".join(f"{label}: {statistics.median(t):.2f} s"
                                                                for label, t in steps.items()), flush=True)
    del trainers
    case = next(c for c in data.cases if c.label == "malignant")
    scan = read_scan(case.image_path)
    latency = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in ("lesion-resunet", "lesion-effnet-lite0"):
            weights = Path(folder) / f"{name}.safetensors"
            save_weights(weights, build_model(name, pretrained=True))  # speed does not depend on the values
            latency[name] = latency_ms(Predictor(ModelCard(name=name, arch=name), weights, device="cpu", check_training_data=False), scan,
                                       args.latency_runs)
    load = os.getloadavg()
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "threads": args.threads, "load_average_at_end": [round(x, 2) for x in load],
        "training_step_seconds": {label: {"median": statistics.median(t), "min": min(t), "max": max(t), "steps": len(t)}
                                  for label, t in steps.items()},
        "batch_size": args.batch_size,
        "latency_scan": f"{case.id} ({scan.pixels.shape[1]}×{scan.pixels.shape[0]})",
        "latency_ms_median": latency,
    }
    print("| configuration | training step of 16 scans (s, median [min, max]) |\n|---|---|")
    for label, t in result["training_step_seconds"].items():
        print(f"| {label} | {t['median']:.2f} [{t['min']:.2f}, {t['max']:.2f}] |")
    print("| model | predict (ms, median) | grad_cam (ms, median) |\n|---|---|---|")
    for name, ms in latency.items():
        print(f"| {name} | {ms['predict_ms']:.1f} | {ms['grad_cam_ms']:.1f} |")
    if args.json:
        write_json(args.json, result)
    print(json.dumps({"load_average_at_end": result["load_average_at_end"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
