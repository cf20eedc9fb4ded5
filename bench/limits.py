"""Bounded work, measured (prints JSON; see bench/README.md).

    python bench/limits.py interrupt [--model tiny|builtin] [--size 1024]
        How long an interrupt takes to land in the middle of a U-Net step: the job is interrupted once the
        first U-Net block of its second step has run; the time from then until the U-Net stops and until the
        job has ended (the interrupted image decoded), and how many U-Net blocks ran after the interrupt.

    python bench/limits.py pnginfo [--side 13000]
        A live API server's peak memory (VmHWM) around POST /sdapi/v1/png-info with a SIDExSIDE black PNG
        (0.5 MB for 13000), once and six times at once.

    python bench/limits.py extras-folder [--files 30] [--side 1024]
        An Extras batch of a folder of FILES noise PNGs of SIDExSIDE, upscaled 2x with Lanczos and saved: the
        peak RSS above the start, in one process, for the way the tab ran it before (every file decoded
        first, every result held: the reference) and as it runs now (one file at a time), with and without
        "Show result images".
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as the tests run (this script used to get it from tests/conftest.py)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def interrupt(model: str, size: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or min(2, os.cpu_count() or 1))
    from modules import paths
    from modules.generation.params import GenerationParams
    from tests.support import tiny_models
    from tests.support.engine import make_engine

    data = Path(tempfile.mkdtemp())
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    if model == "tiny":
        tiny_models.build("sd1", seed=1).write(folder / "m.safetensors")
    else:
        shutil.copy(paths.BUILTIN_MODELS[0], folder / "m.safetensors")
        shutil.copy(paths.BUILTIN_MODELS[0].with_suffix(".yaml"), folder / "m.yaml")
    engine = make_engine(data, "m.safetensors")
    try:
        engine.load_checkpoint()
        unet, vae = engine.checkpoints.current.unet, engine.checkpoints.current.vae
        marks: dict = {"starts": [], "blocks_after": 0}

        def step_started(_m, _a):
            marks["starts"].append(time.perf_counter())

        def block_done(module, _a, _o):
            if "t0" in marks:
                marks["blocks_after"] += 1
            elif module is unet.down_blocks[0] and len(marks["starts"]) == 2:
                marks["t0"] = time.perf_counter()
                engine.queue.interrupt()

        def decoding(_m, _a):
            if "t0" in marks and "t_vae" not in marks:
                marks["t_vae"] = time.perf_counter()

        blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
        handles = [unet.register_forward_pre_hook(step_started), vae.decoder.register_forward_pre_hook(decoding)]
        handles += [b.register_forward_hook(block_done) for b in blocks]
        result = engine.txt2img(GenerationParams(prompt="a red circle", width=size, height=size, steps=4, seed=1,
                                                 sampler_name="Euler", save_images=False))
        end = time.perf_counter()
        for h in handles:
            h.remove()
        return {"model": model, "size": size, "step_s": round(marks["starts"][1] - marks["starts"][0], 2),
                "interrupt_to_unet_stopped_s": round(marks.get("t_vae", end) - marks["t0"], 2),
                "interrupt_to_job_end_s": round(end - marks["t0"], 2),
                "unet_blocks_after_interrupt": marks["blocks_after"], "interrupted": result.interrupted}
    finally:
        engine.queue.stop()
        shutil.rmtree(data, ignore_errors=True)


def black_png(side: int, text: str) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z, row = zlib.compressobj(9), b"\0" * (1 + 3 * side)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"tEXt", b"parameters\0" + text.encode()) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def pnginfo(side: int) -> dict:
    import requests

    from tests.support.server import start_server, stop_server

    def peak_mb(pid: int) -> int:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) // 1024

    data = Path(tempfile.mkdtemp())
    proc, url = start_server(data, "--nowebui", "--no-builtin-model")
    try:
        body = {"image": base64.b64encode(black_png(side, "a cat\nSteps: 20, Seed: 1")).decode()}
        out: dict = {"side": side, "png_bytes": len(base64.b64decode(body["image"])),
                     "peak_mb_before": peak_mb(proc.pid)}
        t = time.perf_counter()
        r = requests.post(url + "/sdapi/v1/png-info", json=body, timeout=600)
        out.update(one_status=r.status_code, one_s=round(time.perf_counter() - t, 2),
                   peak_mb_after_one=peak_mb(proc.pid))
        statuses: list[int] = []
        threads = [threading.Thread(target=lambda: statuses.append(
            requests.post(url + "/sdapi/v1/png-info", json=body, timeout=600).status_code)) for _ in range(6)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        out.update(six_statuses=statuses, six_s=round(time.perf_counter() - t, 2),
                   peak_mb_after_six=peak_mb(proc.pid))
        return out
    finally:
        stop_server(proc)
        shutil.rmtree(data, ignore_errors=True)


EXTRAS_VARIANTS = ("reference_all_decoded_first", "one_at_a_time_shown", "one_at_a_time_not_shown")


def extras_folder(files: int, side: int) -> dict:
    """Each variant in a process of its own (a freed heap would hide the next one's peak), on one folder."""
    import subprocess

    import numpy as np
    from PIL import Image

    data = Path(tempfile.mkdtemp())
    folder = data / "in"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in range(files):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{n:03d}.png",
                                                                                      compress_level=1)
    out: dict = {"files": files, "side": side, "result_side": 2 * side}
    try:
        for variant in EXTRAS_VARIANTS:
            run = subprocess.run([sys.executable, __file__, "extras-folder", "--variant", variant, "--data",
                                  str(data)], capture_output=True, text=True, check=True, cwd=ROOT)
            out[variant] = json.loads(run.stdout.strip().splitlines()[-1])
        return out
    finally:
        shutil.rmtree(data, ignore_errors=True)


def extras_variant(variant: str, data: Path) -> dict:
    from bench.txt2img import RssSampler
    from modules import limits, postprocessing
    from modules.ui.common import images_in, open_image
    from tests.support.engine import make_engine

    engine = make_engine(data, checkpoint=None, limits=limits.Limits(max_extras_images=100_000,
                                                                     max_extras_megapixels=1_000_000))
    params = postprocessing.ExtrasParams(upscaler_1="Lanczos", upscaling_resize=2)
    files = images_in(data / "in", "in")
    sampler = RssSampler()
    try:
        start, t = sampler.reset(), time.perf_counter()
        if variant == "reference_all_decoded_first":  # the tab before: every file decoded, every result held
            result = engine.submit_extras([open_image(f, engine=engine) for f in files], params).wait()
        else:
            result = engine.submit_extras_folder(files, params, show=variant == "one_at_a_time_shown").wait()
        return {"peak_mb_above_start": round((sampler.read_peak() - start) / 2**20),
                "seconds": round(time.perf_counter() - t, 1), "saved": len(result.paths), "shown": len(result.images)}
    finally:
        sampler.stop()
        engine.queue.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    i = sub.add_parser("interrupt")
    i.add_argument("--model", choices=["tiny", "builtin"], default="builtin")
    i.add_argument("--size", type=int, default=1024)
    g = sub.add_parser("pnginfo")
    g.add_argument("--side", type=int, default=13000)
    e = sub.add_parser("extras-folder")
    e.add_argument("--files", type=int, default=30)
    e.add_argument("--side", type=int, default=1024)
    e.add_argument("--variant", choices=EXTRAS_VARIANTS, help=argparse.SUPPRESS)  # one run, in a process of its own
    e.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.what == "interrupt":
        print(json.dumps(interrupt(a.model, a.size)))
    elif a.what == "pnginfo":
        print(json.dumps(pnginfo(a.side)))
    elif a.variant:
        print(json.dumps(extras_variant(a.variant, a.data)))
    else:
        print(json.dumps(extras_folder(a.files, a.side)))


if __name__ == "__main__":
    main()
