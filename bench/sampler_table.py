"""Every sampler on the tiny SD 1.x test model: agreement with A1111's computation (k-diffusion, or
A1111's own formulas restated in tests/engine/test_samplers.py), seconds per step, and determinism.
Prints JSON lines. Run: OMP_NUM_THREADS=1 python -m bench.sampler_table"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as the tests run (this script used to get it from tests/conftest.py)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from modules.generation import pipeline, samplers  # noqa: E402
from tests.engine import test_samplers as T  # noqa: E402
from tests.support import kdiffusion_ref as K  # noqa: E402
from tests.support import tiny_models  # noqa: E402
from tests.support.engine import make_manager  # noqa: E402

STEPS, SEEDS, CFG = 20, [11, 12], 7.0


def main() -> None:
    data = Path(tempfile.mkdtemp())
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    tiny_models.build("sd1", seed=1).write(folder / "sd1.safetensors")
    manager = make_manager(data)
    model = manager.get(manager.checkpoints.find("sd1.safetensors"))
    cond, uncond = model.text.encode("a red circle")[None], model.text.encode("")[None]
    for spec in samplers.SAMPLERS:
        name = spec.name
        calls = []
        real_call = pipeline.Denoiser.__call__

        def counting(self, x, t):
            calls.append(1)
            return real_call(self, x, t)

        pipeline.Denoiser.__call__ = counting
        start = time.perf_counter()
        got = T.ours(model, name, STEPS, SEEDS, cond, uncond, CFG)
        elapsed = time.perf_counter() - start
        pipeline.Denoiser.__call__ = real_call
        again = T.ours(model, name, STEPS, SEEDS, cond, uncond, CFG)
        with torch.no_grad():
            if name in T.K_FUNCTIONS:
                ref, against = T.reference(model, name, STEPS, SEEDS, cond, uncond, CFG), "k-diffusion"
            elif name in ("DDIM", "DDIM CFG++"):
                ref = T.a1111_ddim(model, STEPS, SEEDS, cond, uncond, CFG, cfg_pp=name == "DDIM CFG++")
                against = "A1111 formula"
            elif name == "PLMS":
                ref, against = T.a1111_plms(model, STEPS, SEEDS, cond, uncond, CFG), "A1111 formula"
            else:
                ref, against = None, None
        row = {
            "sampler": name, "against": against,
            "max_abs_diff": None if ref is None else (got - ref).abs().max().item(),
            "scale": got.abs().max().item(), "model_calls": len(calls),
            "s_per_step": round(elapsed / STEPS, 4), "deterministic": bool(torch.equal(got, again)),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    K.load()
    main()
