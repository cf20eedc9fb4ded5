"""Render a fixed set of requests with the tiny test models and record what came out, to prove that a
refactor left every image, infotext and API `info` exactly as it was.

    python tools/golden.py --write before.json     # on the commit before the change
    python tools/golden.py --check before.json     # after it: exit 1 and list every case that differs

The record holds, per case, the SHA-256 of each image's pixels, its infotext and the `info` object (less
`job_timestamp`). CPU float results depend on the processor and the thread count, so compare records made on
the same machine; the script always uses THREADS threads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

THREADS = 2
# CPU float sums depend on how work is split between threads: always THREADS, whatever the caller's environment
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(THREADS)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from modules.generation import samplers, schedules  # noqa: E402
from modules.generation.params import GenerationParams, Img2ImgParams  # noqa: E402
from tests.support import tiny_models  # noqa: E402

SIZE = dict(width=64, height=64)


def _init_image() -> Image.Image:
    image = Image.new("RGB", (64, 64), (40, 90, 160))
    ImageDraw.Draw(image).ellipse((12, 12, 52, 52), fill=(230, 200, 40))
    return image


def _mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 48, 48), fill=255)
    return mask


def cases() -> dict[str, tuple[str, GenerationParams]]:
    """name -> (checkpoint, request). Every sampler at its preset, every schedule with Euler and DPM++ 2M,
    then the options that change the numbers: hires, img2img, inpainting, v-prediction, clip skip,
    emphasis, RNG sources, ENSD, variation seeds, batches, sampler options."""
    base = dict(prompt="a (red:1.3) cat [on|under] a [table:chair:0.5]", negative_prompt="blurry", seed=1234,
                subseed=4321, steps=6, cfg_scale=6.5, **SIZE)
    out: dict[str, tuple[str, GenerationParams]] = {}
    for spec in samplers.SAMPLERS:
        out[f"sampler {spec.name}"] = ("sd1.safetensors", GenerationParams(**base, sampler_name=spec.name))
    for key in schedules.SCHEDULES:
        for name in ("Euler", "DPM++ 2M", "DDIM"):
            out[f"schedule {key} {name}"] = ("sd1.safetensors",
                                             GenerationParams(**base, sampler_name=name, scheduler=key))
    out["hires latent"] = ("sd1.safetensors", GenerationParams(**base, sampler_name="Euler a", enable_hr=True,
                                                               hr_scale=1.5, denoising_strength=0.6))
    out["hires lanczos other sampler"] = ("sd1.safetensors", GenerationParams(
        **base, enable_hr=True, hr_upscaler="Lanczos", hr_sampler_name="DDIM", hr_second_pass_steps=3,
        hr_prompt="a dog", hr_resize_x=96, hr_resize_y=96))
    out["batch and count"] = ("sd1.safetensors", GenerationParams(**{**base, "seed": 7}, sampler_name="Euler a",
                                                                  batch_size=2, n_iter=2))
    out["variation seed"] = ("sd1.safetensors", GenerationParams(**{**base, "subseed": 99}, sampler_name="Euler a",
                                                                 subseed_strength=0.3, seed_resize_from_w=96,
                                                                 seed_resize_from_h=64))
    out["sampler options"] = ("sd1.safetensors", GenerationParams(**base, sampler_name="Euler", s_churn=0.5,
                                                                  s_noise=1.01))
    out["eta"] = ("sd1.safetensors", GenerationParams(**base, sampler_name="DPM++ 2M SDE", eta=0.6))
    for key, value in [("CLIP_stop_at_last_layers", 2), ("emphasis", "No norm"), ("randn_source", "CPU"),
                       ("randn_source", "NV"), ("eta_noise_seed_delta", 31337), ("eta_ancestral", 0.8),
                       ("rho", 5.0), ("always_discard_next_to_last_sigma", True)]:
        out[f"setting {key}={value}"] = ("sd1.safetensors", GenerationParams(
            **base, sampler_name="Euler a", override_settings={key: value}))
    out["sd2 v-prediction"] = ("sd2-v.safetensors", GenerationParams(**base, sampler_name="DPM++ 2M"))
    out["sd2 v ddim"] = ("sd2-v.safetensors", GenerationParams(**base, sampler_name="DDIM"))
    img = dict(base, init_images=[_init_image()])
    out["img2img"] = ("sd1.safetensors", Img2ImgParams(**img, sampler_name="Euler a", denoising_strength=0.6))
    out["img2img ddim"] = ("sd1.safetensors", Img2ImgParams(**img, sampler_name="DDIM", denoising_strength=0.5))
    out["img2img resize modes"] = ("sd1.safetensors", Img2ImgParams(**{**img, "width": 96}, resize_mode=2,
                                                                    sampler_name="Euler"))
    for fill in range(4):
        out[f"inpaint fill {fill}"] = ("sd1.safetensors", Img2ImgParams(
            **img, mask=_mask(), inpainting_fill=fill, sampler_name="Euler a", denoising_strength=0.8))
    out["inpaint only masked"] = ("sd1.safetensors", Img2ImgParams(
        **img, mask=_mask(), inpaint_full_res=True, inpaint_full_res_padding=8, sampler_name="DPM++ 2M"))
    out["inpainting model"] = ("sub/sd1-inpainting.safetensors", Img2ImgParams(
        **img, mask=_mask(), sampler_name="Euler a", denoising_strength=1.0))
    return out


def render(data: Path) -> dict[str, dict]:
    from tests.support.engine import make_engine

    engine = make_engine(data)
    record: dict[str, dict] = {}
    try:
        for name, (checkpoint, params) in cases().items():
            params = params.model_copy(update={"override_settings": {**params.override_settings,
                                                                       "sd_model_checkpoint": checkpoint}})
            result = engine.img2img(params) if isinstance(params, Img2ImgParams) else engine.txt2img(params)
            info = {k: v for k, v in result.info.items() if k != "job_timestamp"}
            record[name] = {"pixels": [hashlib.sha256(i.tobytes()).hexdigest() for i in result.images],
                            "infotexts": result.infotexts, "info": info}
            print(f"{name}: {record[name]['pixels'][0][:12]}", file=sys.stderr)
    finally:
        engine.queue.stop()
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="FILE")
    group.add_argument("--check", metavar="FILE")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        folder = data / "models" / "Stable-diffusion"
        tiny_models.build("sd1", seed=1).write(folder / "sd1.safetensors")
        tiny_models.build("sd1", inpainting=True, seed=2).write(folder / "sub" / "sd1-inpainting.safetensors")
        tiny_models.build("sd2", prediction_type="v_prediction", seed=3).write(folder / "sd2-v.safetensors")
        record = render(data)
    if args.write:
        Path(args.write).write_text(json.dumps(record, indent=1, sort_keys=True))
        print(f"{len(record)} cases written to {args.write}")
        return 0
    before = json.loads(Path(args.check).read_text())
    differ = [name for name in sorted(set(before) | set(record)) if before.get(name) != record.get(name)]
    for name in differ:
        old, new = before.get(name, {}), record.get(name, {})
        parts = [part for part in ("pixels", "infotexts", "info") if old.get(part) != new.get(part)]
        print(f"DIFFERS: {name} ({', '.join(parts) or 'missing'})")
    print(f"{len(record) - len(differ)} of {len(set(before) | set(record))} cases identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
