"""Jobs of the built-in model after another thread has computed with PyTorch, with and without that thread
handing back its OpenMP helpers before it waits (modules/openmp.py), side by side in one process; prints JSON.

    python bench/openmp_teams.py [--images 6]

Each case: the main thread runs a few 512x512 matrix products (as a test, or any thread that built or ran a model,
does), then waits for txt2img jobs (128x128, 20 steps, Euler a) through the queue. "kept": the helpers of the main
thread stay alive (what happened before Job.wait released them); "released": Job.wait hands them back, as it
does now. The reference case runs the same jobs before the main thread has computed anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from modules import jobs, openmp, paths  # noqa: E402
from modules.generation.params import GenerationParams  # noqa: E402
from tests.support.engine import make_engine  # noqa: E402

REQUEST = dict(prompt="a red circle on a white background", steps=20, sampler_name="Euler a", cfg_scale=7,
               width=128, height=128, save_images=False)


def per_image(engine, images: int) -> float:
    engine.txt2img(GenerationParams(**REQUEST, seed=0))  # warm-up
    start = time.perf_counter()
    for seed in range(images):
        engine.txt2img(GenerationParams(**REQUEST, seed=seed))
    return round((time.perf_counter() - start) / images, 3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    engine = make_engine(Path(tempfile.mkdtemp()), checkpoint=None, builtin_files=paths.BUILTIN_MODELS)
    out = {"benchmark": "openmp_teams", "torch_threads": torch.get_num_threads(), "cores": os.cpu_count()}
    try:
        out["reference_s_per_image"] = per_image(engine, args.images)
        a = torch.randn(512, 512)
        for _ in range(20):
            a @ a
        release = openmp.release
        jobs.openmp.release = lambda: False  # as before: the waiting thread keeps its helpers
        try:
            out["kept_s_per_image"] = per_image(engine, args.images)
        finally:
            jobs.openmp.release = release
        out["released_s_per_image"] = per_image(engine, args.images)
    finally:
        engine.queue.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
