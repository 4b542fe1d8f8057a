"""Streaming batch prediction: scans per second and peak memory of ``imagemasknet predict FOLDER --out
FILE.jsonl --workers W`` over COUNT scans, for each W.

The folder holds COUNT BUSI scans hard-linked (or copied) under new names. Each run is a fresh
process; a sampler reads ``/proc`` every 200 ms for the whole process tree (the CLI and its DataLoader
workers): proportional set size (PSS: pages shared by forked workers counted once, split among the
processes that map them), private memory (USS) and RSS, summed over the tree, the largest single
process's peak RSS (VmHWM), and how many records the output file holds, so that the PSS while the first
and the second half of the records were written shows whether memory grows with the number of files. Scans per second are counted from the first record to the
last (start-up — importing torch, loading the model — reported apart).

    python benchmarks/stream_predict.py --count 5000 --workers 0 1 2 --json benchmarks/results/stream-predict.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from imagemasknet.data.busi import find_data_root


def busi_images(root: Path) -> list[Path]:
    files = sorted(root.glob("*/images/*.png")) or sorted(p for p in root.rglob("*.png") if "_mask" not in p.name)
    if not files:
        raise SystemExit(f"no BUSI scans under {root}")
    return files


def make_folder(dest: Path, count: int, sources: list[Path]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        target = dest / f"scan-{k:05d}{sources[k % len(sources)].suffix}"
        if target.exists():
            continue
        try:
            os.link(sources[k % len(sources)], target)
        except OSError:
            shutil.copyfile(sources[k % len(sources)], target)
    return dest


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(c) for c in handle.read().split()]
    except OSError:
        pass
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += _children(p)
    return tree


def _kib(path: str, *names: str) -> dict[str, int]:
    """Fields of a /proc file in KiB (0 for a process that is gone)."""
    found = dict.fromkeys(names, 0)
    try:
        with open(path) as handle:
            for line in handle:
                name = line.split(":", 1)[0]
                if name in found:
                    found[name] = int(line.split()[1])
    except OSError:
        pass
    return found


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return 0


class _LineCounter:
    """Records in the output file so far, reading only what was appended since the last call."""

    def __init__(self, path: Path):
        self.path, self.offset, self.count = path, 0, 0

    def __call__(self) -> int:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return self.count
        self.offset += len(chunk)
        self.count += chunk.count(b"\n")
        return self.count


def run_once(folder: Path, out: Path, workers: int, count: int, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "imagemasknet", "predict", str(folder), "--out", str(out),
               "--workers", str(workers), "--no-progress", *extra]
    # (seconds, tree USS KiB, records, processes, tree PSS KiB, tree RSS KiB)
    samples: list[tuple[float, int, int, int, int, int]] = []
    peak_hwm = 0
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    counted = _LineCounter(out)

    def sample() -> None:
        nonlocal peak_hwm
        while not stop.is_set():
            tree = process_tree(process.pid)
            rollups = [_kib(f"/proc/{p}/smaps_rollup", "Rss", "Pss", "Private_Clean", "Private_Dirty") for p in tree]
            uss = sum(r["Private_Clean"] + r["Private_Dirty"] for r in rollups)
            peak_hwm = max([peak_hwm] + [_kib(f"/proc/{p}/status", "VmHWM")["VmHWM"] for p in tree])
            samples.append((time.monotonic() - started, uss, counted(), len(tree), sum(r["Pss"] for r in rollups),
                            sum(r["Rss"] for r in rollups)))
            stop.wait(0.2)  # reading smaps_rollup costs the kernel time: sample 5 times a second

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    ended = time.monotonic()
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"predict failed ({process.returncode}): {stderr[-2000:]}")
    records = _lines(out)
    first = next((s[0] for s in samples if s[2] > 0), None)
    last = next((s[0] for s in samples if s[2] >= records), ended - started)
    windows = ((max(1, records // 10), records // 2), (records // 2, records + 1))
    halves = [[s[1] for s in samples if lo <= s[2] < hi] for lo, hi in windows]  # USS
    pss_halves = [[s[4] for s in samples if lo <= s[2] < hi] for lo, hi in windows]
    mib = lambda kib: round(kib / 1024, 1)  # noqa: E731
    return {
        "workers": workers, "scans": count, "records": records, "seconds_total": round(ended - started, 2),
        "startup_seconds": round(first, 2) if first is not None else None,
        "scans_per_second": round((records - 1) / (last - first), 1) if first is not None and last > first else None,
        "scans_per_second_overall": round(records / (ended - started), 1),
        "peak_tree_uss_mib": mib(max(s[1] for s in samples)) if samples else None,
        "peak_tree_uss_first_half_mib": mib(max(halves[0])) if halves[0] else None,
        "peak_tree_uss_second_half_mib": mib(max(halves[1])) if halves[1] else None,
        "peak_tree_pss_mib": mib(max(s[4] for s in samples)) if samples else None,
        "peak_tree_pss_first_half_mib": mib(max(pss_halves[0])) if pss_halves[0] else None,
        "peak_tree_pss_second_half_mib": mib(max(pss_halves[1])) if pss_halves[1] else None,
        "peak_tree_rss_mib": mib(max(s[5] for s in samples)) if samples else None,
        # PSS of the tree at each tenth of the records written: flat, or growing with the files?
        "tree_pss_by_tenth_mib": [mib(next((s[4] for s in samples if s[2] >= records * k // 10), 0)) for k in range(1, 11)],
        "peak_process_rss_mib": mib(peak_hwm),
        "processes": max((s[3] for s in samples), default=1),
        "summary": stderr.strip().splitlines()[-1] if stderr.strip() else "",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000, help="scans to predict (BUSI scans under new names)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", help="BUSI folder (default: found automatically)")
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every predict call")
    args = parser.parse_args()

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="stream-predict-"))
    try:
        folder = make_folder(work / "scans", args.count, busi_images(find_data_root(args.data)))
        results = []
        for workers in args.workers:
            out = work / f"out-{workers}.jsonl"
            out.unlink(missing_ok=True)
            result = run_once(folder, out, workers, args.count, args.extra)
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs visible, torch threads default, load average " \
              f"{os.getloadavg()[0]:.1f} at the end"
    print(f"\n{args.count} scans; {machine}\n")
    print("| workers | scans/s (first to last record) | scans/s incl. start-up | peak memory, whole tree (PSS) | "
          "peak PSS while records 10–50 % / 50–100 % were written | peak RSS, whole tree | largest process peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['scans_per_second']} | {r['scans_per_second_overall']} | {r['peak_tree_pss_mib']} MiB | "
              f"{r['peak_tree_pss_first_half_mib']} / {r['peak_tree_pss_second_half_mib']} MiB | "
              f"{r['peak_tree_rss_mib']} MiB | {r['peak_process_rss_mib']} MiB |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"count": args.count, "machine": machine, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
