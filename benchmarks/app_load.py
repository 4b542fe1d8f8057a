"""The app under load, in headless Chromium against one ``streamlit run app.py`` on localhost.

1. Concurrency: SESSIONS browser contexts (each its own Streamlit session) open the Classify page and
   upload a different BUSI scan at the same moment, ROUNDS times with fresh scans; prints p50 and p95
   of the time from upload to the predicted class on screen, and checks each class against the
   Predictor's own answer for that scan.
2. Soak: one session uploads SOAK different scans one after another (upload, wait for its result,
   remove it, as a clinician working through a list would); the server's resident memory is read from
   /proc every SAMPLE_EVERY uploads, so the curve shows whether it levels off.
3. Large uploads (``--large N``): SESSIONS sessions each upload N black 7000 × 7000 PNGs (46 KB apiece) at
   once, as a visitor trying to exhaust the server would; the server's memory is sampled every half second
   while they are read, then after the files are removed and after the sessions close.

    python benchmarks/app_load.py --sessions 10 --rounds 3 --soak 600 --large 10 --json benchmarks/results/app-load.json

Needs Chromium (/usr/bin/chromium or $CHROMIUM) and the test extras (playwright). The server's caches
and runs folders go to a temporary folder; nothing in the repository is written but the --json file.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the browser plumbing is shared with the end-to-end tests

from e2e_helpers import (  # noqa: E402
    ANSWER, CHROMIUM_ARGS, UPLOADER, VIEWPORT, classify_concurrently, find_chromium, open_app, process_rss_mib,
    running_server, wait_idle,
)
from PIL import Image  # noqa: E402

from imagemasknet.core.files import write_json  # noqa: E402
from imagemasknet.data.busi import find_data_root  # noqa: E402
from imagemasknet.data.scans import read_scan  # noqa: E402
from imagemasknet.inference.predictor import Predictor  # noqa: E402


def interleaved_scans(root: Path) -> list[Path]:
    """All BUSI scans, the classes interleaved, so any prefix mixes normal, benign and malignant."""
    by_class = [sorted((root / label / "images").glob("*.png")) for label in ("benign", "malignant", "normal")]
    scans = []
    for index in range(max(len(files) for files in by_class)):
        scans.extend(files[index] for files in by_class if index < len(files))
    if not scans:
        raise SystemExit(f"no BUSI scans under {root}")
    return scans


def concurrency(browser, url: str, scans: list[Path], sessions: int, rounds: int, predictor) -> dict:
    # One upload first, not counted: the server's first classification loads the model and indexes the
    # training scans (kept in the cache folder across restarts), which no later upload waits for.
    first = classify_concurrently(browser, url, scans[-1:])[0][1]
    print(f"first upload after the server started (model loaded, training scans indexed): {first:.1f} s", flush=True)
    seconds, wrong = [], []
    for round_index in range(rounds):
        batch = scans[round_index * sessions:(round_index + 1) * sessions]
        results = classify_concurrently(browser, url, batch)
        for path, (shown, elapsed) in zip(batch, results):
            expected = predictor.predict(read_scan(path)).predicted_class.capitalize()
            if shown != expected:
                wrong.append({"file": path.name, "shown": shown, "expected": expected})
            seconds.append(elapsed)
        print(f"round {round_index + 1}/{rounds}: {sessions} sessions, upload→result "
              f"median {statistics.median(s for _, s in results):.2f} s, slowest {max(s for _, s in results):.2f} s",
              flush=True)
    return {"sessions": sessions, "rounds": rounds, "uploads": len(seconds), "wrong": wrong, "first_upload_s": round(first, 1),
            "p50_s": round(float(np.percentile(seconds, 50)), 3),
            "p95_s": round(float(np.percentile(seconds, 95)), 3),
            "max_s": round(max(seconds), 3), "seconds": [round(s, 3) for s in seconds]}


def soak(browser, url: str, scans: list[Path], uploads: int, sample_every: int, server_pid: int) -> dict:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(120_000)
    samples = [{"uploads": 0, "rss_mib": round(process_rss_mib(server_pid), 1)}]
    seconds = []
    started = time.monotonic()
    try:
        open_app(page, url)
        samples[0]["rss_mib"] = round(process_rss_mib(server_pid), 1)  # after the first script run loaded the model
        for count in range(1, uploads + 1):
            path = scans[(count - 1) % len(scans)]
            begin = time.monotonic()
            page.locator(UPLOADER).first.set_input_files(str(path))
            page.locator("h4", has_text=path.name).wait_for()
            page.locator(ANSWER).first.wait_for()
            seconds.append(time.monotonic() - begin)
            wait_idle(page, quiet=0.3)
            page.get_by_label(f"Remove {path.name}", exact=True).click()
            page.get_by_text("Drop one or several scans above").wait_for()
            if count % sample_every == 0 or count == uploads:
                rss = process_rss_mib(server_pid)
                samples.append({"uploads": count, "rss_mib": round(rss, 1)})
                print(f"soak {count}/{uploads}: server RSS {rss:.0f} MiB, "
                      f"{(time.monotonic() - started) / count:.2f} s per upload", flush=True)
    finally:
        context.close()
    half = len(samples) // 2
    return {"uploads": uploads, "distinct_scans": min(uploads, len(scans)), "samples": samples,
            "rss_start_mib": samples[0]["rss_mib"], "rss_mid_mib": samples[half]["rss_mib"],
            "rss_end_mib": samples[-1]["rss_mib"], "rss_peak_mib": max(s["rss_mib"] for s in samples),
            "upload_to_result_p50_s": round(float(np.percentile(seconds, 50)), 3),
            "upload_to_result_p95_s": round(float(np.percentile(seconds, 95)), 3)}


def large_uploads(browser, url: str, sessions: int, files: int, server_pid: int, work: Path) -> dict:
    """Every session uploads ``files`` black 7000 × 7000 PNGs at once; the server's memory while they are read,
    after the files are removed, and after the sessions close."""
    paths = []
    for n in range(files):
        path = work / f"black-7000-{n:02d}.png"
        Image.new("L", (7000, 7000), n).save(path)  # a different grey each: no two uploads share a cache entry
        paths.append(path)
    samples, stop = [], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(process_rss_mib(server_pid))
            time.sleep(0.5)

    before = process_rss_mib(server_pid)
    contexts = [browser.new_context(viewport=VIEWPORT) for _ in range(sessions)]
    sampler = threading.Thread(target=sample, daemon=True)
    try:
        pages = [context.new_page() for context in contexts]
        for page in pages:
            page.set_default_timeout(600_000)
            open_app(page, url)
        loaded = process_rss_mib(server_pid)
        sampler.start()
        started = time.monotonic()
        for page in pages:
            page.locator(UPLOADER).first.set_input_files([str(p) for p in paths])
        for page in pages:  # every file answered: a result, or a refusal naming it
            page.wait_for_function(
                "n => document.querySelectorAll('[data-testid=\"stAlertContentError\"], "
                "[data-testid=\"stDataFrame\"]').length > 0 && !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                arg=files)
            wait_idle(page, quiet=1.0)
        answered = time.monotonic() - started
        during = max(samples) if samples else process_rss_mib(server_pid)
        for page in pages:
            for path in paths:
                remove = page.get_by_label(f"Remove {path.name}", exact=True)
                if remove.count():
                    remove.first.click()
            wait_idle(page, quiet=0.5)
        removed = process_rss_mib(server_pid)
    finally:
        stop.set()
        for context in contexts:
            context.close()
    time.sleep(5)
    closed = process_rss_mib(server_pid)
    return {"sessions": sessions, "files_per_session": files, "file": "black 7000 x 7000 PNG, 46 KB",
            "rss_before_mib": round(before, 1), "rss_pages_open_mib": round(loaded, 1),
            "rss_peak_while_reading_mib": round(during, 1), "rss_after_removing_mib": round(removed, 1),
            "rss_after_closing_mib": round(closed, 1), "seconds_to_answer_all": round(answered, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of concurrent uploads (0: skip them)")
    parser.add_argument("--soak", type=int, default=300, help="uploads in the soak session (0: skip it)")
    parser.add_argument("--sample-every", type=int, default=10)
    parser.add_argument("--large", type=int, default=0, help="7000 x 7000 files each session uploads at once (0: skip)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("no Chromium found: install Debian's chromium or set $CHROMIUM")
    from playwright.sync_api import sync_playwright

    scans = interleaved_scans(find_data_root())
    predictor = Predictor.shipped()
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory(prefix="imagemasknet-load-") as work, running_server(Path(work)) as (url, server):
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            try:
                if args.rounds:
                    report["concurrency"] = concurrency(browser, url, scans, args.sessions, args.rounds, predictor)
                    load = report["concurrency"]
                    print(f"{load['uploads']} uploads in {args.rounds} rounds of {args.sessions} concurrent sessions: "
                          f"p50 {load['p50_s']:.2f} s, p95 {load['p95_s']:.2f} s, max {load['max_s']:.2f} s, "
                          f"{len(load['wrong'])} wrong", flush=True)
                if args.large:
                    report["large_uploads"] = large_uploads(browser, url, args.sessions, args.large, server.pid, Path(work))
                    result = report["large_uploads"]
                    print(f"large uploads: {args.sessions} sessions x {args.large} files: server RSS "
                          f"{result['rss_pages_open_mib']:.0f} → peak {result['rss_peak_while_reading_mib']:.0f} → "
                          f"{result['rss_after_removing_mib']:.0f} MiB after removing them", flush=True)
                if args.soak:
                    fresh = scans[args.sessions * args.rounds:] or scans
                    report["soak"] = soak(browser, url, fresh, args.soak, args.sample_every, server.pid)
                    result = report["soak"]
                    print(f"soak: {result['uploads']} uploads, server RSS {result['rss_start_mib']:.0f} → "
                          f"{result['rss_mid_mib']:.0f} (half-way) → {result['rss_end_mib']:.0f} MiB, "
                          f"upload→result p50 {result['upload_to_result_p50_s']:.2f} s", flush=True)
            finally:
                browser.close()
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
