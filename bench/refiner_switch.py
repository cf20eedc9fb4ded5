"""Peak memory and time of a txt2img job that switches to a refiner, against the same job without one.

    python bench/refiner_switch.py BASE [--refiner FILE] [--width 512 --height 512 --steps 4 --switch-at 0.5]

Without --refiner the base file itself, under a second name (a hard link in the temporary folder, which must be
on the same file system), is the refiner (A1111 switches to any checkpoint
that is not the one loaded; an SDXL base is larger than the SDXL refiner, so this is the harder case). Runs our
engine as webui.py does, in a temporary data dir whose checkpoint folder holds links to the files, and prints one
JSON object: for the plain job and the refiner job, the wall time and the peak RSS (sampled every 10 ms, the
process's whole RSS), and the RSS before each. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import txt2img as bench  # noqa: E402  (sets the offline environment before Hugging Face imports)

from modules import bootstrap, devices, logs, paths  # noqa: E402
from modules.generation.params import GenerationParams  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("--refiner", type=Path)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--switch-at", type=float, default=0.5)
    args = ap.parse_args(argv)
    logs.setup()
    rss = bench.RssSampler()
    with tempfile.TemporaryDirectory(prefix="refiner-bench-") as tmp:
        data = Path(tmp)
        folder = data / "models" / "Stable-diffusion"
        folder.mkdir(parents=True)
        (folder / "base.safetensors").symlink_to(args.base.resolve())
        if args.refiner is None:  # the same file under a second name: a hard link (the registry lists a file once)
            os.link(args.base.resolve(), folder / "refiner.safetensors")
        else:
            (folder / "refiner.safetensors").symlink_to(args.refiner.resolve())
        p = paths.from_args(str(data))
        paths.ensure_dirs(p)
        engine = bootstrap.build_engine(p, devices.plan(skip_cuda_test=True))
        engine.options.update({"sd_model_checkpoint": "base.safetensors"})
        figures = {}
        try:
            for name, refiner in (("plain", None), ("with_refiner", "refiner.safetensors")):
                engine.load_checkpoint("base.safetensors")
                params = GenerationParams(prompt=bench.PROMPT, seed=1, sampler_name="Euler a", steps=args.steps,
                                          width=args.width, height=args.height, save_images=False,
                                          refiner_checkpoint=refiner, refiner_switch_at=args.switch_at)
                before = rss.reset()
                start = time.perf_counter()
                result = engine.txt2img(params)
                figures[name] = {"wall_s": round(time.perf_counter() - start, 2),
                                 "rss_before_mb": round(before / bench.MB, 1),
                                 "peak_rss_mb": round(rss.read_peak() / bench.MB, 1),
                                 "infotext": result.infotexts[0]}
        finally:
            engine.queue.stop()
            rss.stop()
    print(json.dumps({"base_file": str(args.base), "refiner_file": str(args.refiner or args.base),
                      "size": f"{args.width}x{args.height}", "steps": args.steps, "switch_at": args.switch_at,
                      **figures, "machine": {"cpu_count": os.cpu_count()}}, indent=1))


if __name__ == "__main__":
    main()
