"""The history index at scale: builds a data folder with --count tiny PNGs (A1111's layout, an infotext in each:
varied prompts, seeds, five models, LoRAs on about a third), indexes it with the app's own rescan (start-up's
heal), then times searches and a rescan of the unchanged folder. Prints one JSON object.

    python bench/history.py [--count 100000] [--dir /tmp/history-bench-100000] [--repeat 5]

The folder is kept and reused by a later run with the same --count (delete it to start over). The targets
(issue 20): a search under 100 ms and a rescan of an unchanged folder under 10 s at 100,000 images.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402
from PIL.PngImagePlugin import PngInfo  # noqa: E402

from modules import bootstrap, devices, paths  # noqa: E402

WORDS = ("red blue green golden silver castle forest river mountain portrait cat dog fox owl dragon knight city "
         "street night sunset dawn fog rain snow desert ocean ship lighthouse garden flower tree robot astronaut "
         "cyberpunk watercolor oil painting photo cinematic lighting detailed sharp soft bokeh macro wide angle "
         "ancient modern futuristic village market temple bridge tower lake valley cliff cave waterfall").split()
MODELS = ("v1-5-pruned-emaonly", "dreamshaper_8", "realisticVision_v51", "sd_xl_base_1.0", "anything-v5")
LORAS = [f"style{i:02d}" for i in range(20)]
PER_FOLDER = 1000


def infotext(rng: random.Random, i: int) -> str:
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
    if rng.random() < 0.33:
        prompt += f" <lora:{rng.choice(LORAS)}:0.8>"
    negative = " ".join(rng.choice(WORDS) for _ in range(3))
    model = MODELS[i % len(MODELS)]
    return (f"{prompt}\nNegative prompt: {negative}\nSteps: {rng.randint(10, 40)}, Sampler: Euler a, "
            f"CFG scale: 7, Seed: {i}, Size: 512x512, Model hash: {abs(hash(model)) % 10**10:010d}, Model: {model}")


def build_folder(data: Path, count: int) -> float:
    start = time.perf_counter()
    rng = random.Random(0)
    pixels = Image.new("RGB", (8, 8), (40, 80, 160))
    base = datetime.date(2025, 1, 1)
    for i in range(count):
        folder = data / "outputs" / "txt2img-images" / (base + datetime.timedelta(days=i // PER_FOLDER)).isoformat()
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        info = PngInfo()
        info.add_text("parameters", infotext(rng, i))
        path = folder / f"{i % PER_FOLDER:05d}-{i}.png"
        pixels.save(path, pnginfo=info)
        when = time.time() - (count - i)  # one image a second, newest last
        os.utime(path, (when, when))
    (data / ".bench-count").write_text(str(count))
    return time.perf_counter() - start


def rescan(engine) -> float:
    start = time.perf_counter()
    engine.history.rescan()
    engine.history.wait()
    return time.perf_counter() - start


def timed_search(engine, repeat: int, query: str, **kw) -> dict:
    runs, total = [], 0
    for _ in range(repeat + 1):
        start = time.perf_counter()
        rows, total = engine.history.search(query, limit=50, **kw)
        runs.append(time.perf_counter() - start)
    runs = runs[1:]  # the first warms SQLite's page cache
    return {"median_ms": round(statistics.median(runs) * 1000, 2), "max_ms": round(max(runs) * 1000, 2),
            "matches": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    data = args.dir or Path(f"/tmp/history-bench-{args.count}")
    marker = data / ".bench-count"
    out: dict = {"count": args.count, "dir": str(data), "cpus": os.cpu_count(),
                 "load_1min_before": round(os.getloadavg()[0], 2)}
    if not (marker.is_file() and marker.read_text() == str(args.count)):
        data.mkdir(parents=True, exist_ok=True)
        out["build_folder_s"] = round(build_folder(data, args.count), 2)
    engine = bootstrap.build_engine(paths.from_args(str(data)), devices.plan(skip_cuda_test=True))
    try:
        indexed_before = engine.history.index.count()
        out["first_rescan_s"] = round(rescan(engine), 2)
        out["first_rescan_read"] = engine.history.status().read
        out["indexed_before_first_rescan"] = indexed_before
        out["rescan_unchanged_s"] = round(rescan(engine), 3)
        out["rescan_unchanged_read"] = engine.history.status().read
        out["indexed"] = engine.history.index.count()
        out["fts5"] = engine.history.index.fts
        mid = args.count // 2
        out["search"] = {
            "one word (common)": timed_search(engine, args.repeat, "castle"),
            "three words": timed_search(engine, args.repeat, "red castle night"),
            "seed:": timed_search(engine, args.repeat, f"seed:{mid}"),
            "model:": timed_search(engine, args.repeat, "model:dreamshaper"),
            "lora:": timed_search(engine, args.repeat, "lora:style07"),
            "word + kind + since": timed_search(engine, args.repeat, "fox kind:txt2img",
                                                since=datetime.date.today().isoformat()),
            "everything, first page": timed_search(engine, args.repeat, ""),
            "everything, page in the middle": timed_search(engine, args.repeat, "", offset=mid),
        }
        out["search_worst_median_ms"] = max(s["median_ms"] for s in out["search"].values())
        out["load_1min_after"] = round(os.getloadavg()[0], 2)
    finally:
        engine.queue.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
