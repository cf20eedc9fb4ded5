"""Bounded work, measured (prints JSON; see bench/README.md).

    python bench/limits.py interrupt [--model tiny|builtin] [--size 1024]
        How long an interrupt takes to land in the middle of a U-Net step: the job is interrupted once the
        first U-Net block of its second step has run; the time from then until the U-Net stops and until the
        job has ended (the interrupted image decoded), and how many U-Net blocks ran after the interrupt.

    python bench/limits.py pnginfo [--side 13000]
        A live API server's peak memory (VmHWM) around POST /sdapi/v1/png-info with a SIDExSIDE black PNG
        (0.5 MB for 13000), once and six times at once.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    i = sub.add_parser("interrupt")
    i.add_argument("--model", choices=["tiny", "builtin"], default="builtin")
    i.add_argument("--size", type=int, default=1024)
    g = sub.add_parser("pnginfo")
    g.add_argument("--side", type=int, default=13000)
    a = p.parse_args()
    print(json.dumps(interrupt(a.model, a.size) if a.what == "interrupt" else pnginfo(a.side)))


if __name__ == "__main__":
    main()
