"""The engine on an NVIDIA GPU (CUDA, fp16 weights, as webui.py runs there) with the tiny models: finite images,
the fp16 VAE's NaN fallback, the GPU random number source, PyTorch's SDP attention, FP8 weights computing in fp16,
and CUDA fp16 images against CPU fp32 images of the same request.

Every test here gets the `cuda` marker from its folder (tests/conftest.py), and every ./run_tests.sh run
deselects them (`-m "not cuda"`): CI has no GPU. bench/gpu_check.sh runs them on the device machine
(`pytest -m cuda tests/cuda`). Without CUDA they fail, never skip, so that a run that asked for them cannot pass
without doing them. CUDA_TESTS_ON_CPU=1 (set by bench/gpu_check.sh's dry run only) runs their code on the CPU with
fp16 weights, to check the tests themselves where there is no GPU; it says nothing about CUDA, and the one test that
needs NVIDIA's generator is skipped then, with that reason."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch

from modules import bootstrap, devices, paths
from modules.generation import pipeline, rng
from modules.models import low_memory, optimizations
from tests.support import tiny_models
from tests.support.generation import params, psnr

ON_CPU = os.environ.get("CUDA_TESTS_ON_CPU") == "1"

# CUDA fp16 against CPU fp32, the same request (tiny models, 128x128, 20 steps of Euler a, CPU noise). The same
# comparison with fp16 weights on the CPU (what CUDA_TESTS_ON_CPU=1 runs) differed by at most 2-3/255, 0.21-0.26/255
# on average, 53.8-55.3 dB PSNR for sd1 and sdxl. GPU kernels round differently (tensor cores, fused attention), so
# the bounds leave about 4x that: still far from what a real fault gives (wrong noise, a wrong dtype on the way:
# these random-weight models' images are noise-like, std ~65/255, so unrelated images differ by ~70/255 on average,
# ~10 dB).
MEAN_DIFF_MAX = 1.0  # /255, mean over all pixels and channels
MAX_DIFF_MAX = 16  # /255, any one pixel
PSNR_MIN_DB = 40.0

CHECKPOINTS = {"sd1": "sd1.safetensors", "sdxl": "sdxl.safetensors"}


@pytest.fixture(scope="module")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if ON_CPU:
        return torch.device("cpu")
    pytest.fail(f"CUDA is not available (torch {torch.__version__}, CUDA build {torch.version.cuda}): the tests in "
                "tests/cuda need an NVIDIA GPU. Run them on one (bench/gpu_check.sh); ./run_tests.sh deselects them. "
                "They fail instead of skipping, so that a run without a GPU cannot pass them.", pytrace=False)


@pytest.fixture(scope="module")
def gpu_plan(device) -> devices.DevicePlan:
    """What the engine picks on this machine (devices.plan, as webui.py calls it): on CUDA fp16 for the U-Net and
    the VAE. The CPU dry run uses fp16 weights on the CPU instead."""
    if device.type == "cpu":
        return devices.DevicePlan(device, torch.float16, torch.float16)
    plan = devices.plan(skip_cuda_test=True)
    assert (plan.device.type, plan.unet_dtype, plan.vae_dtype) == ("cuda", torch.float16, torch.float16), plan
    return plan


@pytest.fixture(scope="module")
def models_dir(device, tmp_path_factory):  # device first: without CUDA nothing is built
    d = tmp_path_factory.mktemp("cuda-models")
    tiny_models.build("sd1", seed=1).write(d / CHECKPOINTS["sd1"])
    tiny_models.build("sdxl", seed=1).write(d / CHECKPOINTS["sdxl"])
    return d


@pytest.fixture()
def make(tmp_path, models_dir):
    """make(plan, checkpoint) -> an engine over a fresh data dir holding the tiny sd1 and sdxl; stopped after."""
    engines = []
    shutil.copytree(models_dir, tmp_path / "models" / "Stable-diffusion")

    def build(plan: devices.DevicePlan, checkpoint: str = CHECKPOINTS["sd1"]):
        engine = bootstrap.build_engine(paths.from_args(str(tmp_path)), plan)
        engine.options.update({"sd_model_checkpoint": checkpoint})
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.queue.stop()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(image.convert("RGB"), dtype=np.float64) for image in result.images]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_fp16_generation_on_the_gpu_gives_finite_images(make, gpu_plan, device, family, record_property):
    engine = make(gpu_plan, CHECKPOINTS[family])
    model = engine.load_checkpoint(CHECKPOINTS[family])
    assert model.unet.dtype == torch.float16 and model.unet.device.type == device.type
    assert model.vae.dtype == torch.float16 and model.vae.device.type == device.type
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # the pipeline raises NansError for NaNs in the U-Net's or the VAE's output, so a result means finite numbers
    result = engine.txt2img(params(width=128, height=128, steps=20, batch_size=2, save_images=False))
    assert len(result.images) == 2
    for image in pixels(result):
        assert image.std() > 10, "a flat image: the numbers collapsed somewhere"
    assert model.vae.dtype == torch.float16, "the tiny VAE needed the fp32 fallback: fp16 overflowed"
    if device.type == "cuda":
        record_property("cuda_peak_allocated_mb", round(torch.cuda.max_memory_allocated() / 2**20, 1))


def test_fp16_vae_nans_fall_back_to_fp32_on_the_gpu(make, gpu_plan, device, caplog):
    model = make(gpu_plan).load_checkpoint(CHECKPOINTS["sd1"])
    assert model.vae.dtype == torch.float16
    model.vae.to(torch.float32)
    with torch.no_grad():
        model.vae.post_quant_conv.weight.mul_(3e4)  # overflows fp16 (max 65504) inside the decoder, fine in fp32
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(device)
    expected = pipeline.decode(model, latents)[0]
    model.vae.to(torch.float16)
    with torch.no_grad():
        raw = model.vae.decode((latents / model.vae.config.scaling_factor).half()).sample
    assert torch.isnan(raw).any(), "the fp16 VAE did not overflow, so this test would not reach the fallback"
    with caplog.at_level(logging.WARNING, logger="modules.generation.pipeline"):
        got = pipeline.decode(model, latents)[0]
    assert model.vae.dtype == torch.float32 and model.vae.device.type == device.type
    assert any("NaNs in 16-bit precision" in r.getMessage() for r in caplog.records)
    assert np.abs(np.asarray(got, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1


def test_gpu_random_source_draws_from_the_cuda_generator(make, gpu_plan, device, monkeypatch):
    """randn_source "GPU": each image's noise is torch.randn on a generator of the GPU seeded with its seed, not
    the CPU generator's numbers moved there."""
    noises = []
    image_noise = rng.image_noise

    def spy(*args, **kwargs):
        out = image_noise(*args, **kwargs)
        noises.append(out.detach().clone())
        return out

    monkeypatch.setattr(rng, "image_noise", spy)
    result = make(gpu_plan).txt2img(params(width=128, height=128, steps=2, batch_size=2, seed=100,
                                           save_images=False, override_settings={"randn_source": "GPU"}))
    assert result.seeds == [100, 101] and len(noises) == 1
    noise = noises[0]
    assert noise.device.type == device.type and noise.dtype == torch.float32
    shape = (4, 16, 16)
    expected = torch.stack([torch.randn(shape, generator=torch.Generator(device).manual_seed(seed), device=device)
                            for seed in (100, 101)])
    assert torch.equal(noise, expected)
    if device.type == "cuda":
        cpu = torch.randn(shape, generator=torch.Generator().manual_seed(100))
        assert not torch.equal(noise[0].cpu(), cpu), "the GPU source gave the CPU generator's numbers"
        assert rng.create_generator(100, "GPU", device).device.type == "cuda"


def test_nv_source_gives_the_cuda_generators_numbers(device):
    """rng's NV source computes on the CPU what torch.randn gives on an NVIDIA GPU for a seed (A1111's "NV"): checked
    here against the real thing, two draws in a row (the starting noise, then the first ancestral step's)."""
    if device.type != "cuda":
        pytest.skip("CUDA_TESTS_ON_CPU dry run: there is no NVIDIA generator to compare with")
    shape = (4, 16, 16)
    for seed in (0, 100, 2**32 + 7):
        nv = rng.PhiloxGenerator(seed)
        gpu = torch.Generator("cuda").manual_seed(seed)
        for draw in range(2):
            ours, theirs = nv.randn(shape), torch.randn(shape, generator=gpu, device="cuda").cpu()
            assert torch.allclose(ours, theirs, atol=1e-4), (seed, draw, (ours - theirs).abs().max().item())


def test_the_unet_runs_pytorch_sdp_attention_with_fused_kernels(make, gpu_plan, device, monkeypatch, record_property):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(query, *args, **kwargs):
        calls.append((query.device.type, query.dtype))
        return sdpa(query, *args, **kwargs)

    engine = make(gpu_plan)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    engine.txt2img(params(width=128, height=128, steps=2, save_images=False))
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)
    model = engine.load_checkpoint(CHECKPOINTS["sd1"])
    assert model.attention == "sdp"
    assert {type(optimizations.inner_processor(p)).__name__
            for p in model.unet.attn_processors.values()} == {"AttnProcessor2_0"}
    assert calls and set(calls) == {(device.type, torch.float16)}, set(calls)

    # Which kernels PyTorch picks for the U-Net's attention: a fused one (flash, memory-efficient or cuDNN on CUDA;
    # the CPU's flash kernel in the dry run), not only the plain math fallback. The tiny U-Net's first level has
    # 4-wide heads, which only the math kernel takes in fp16; its other levels have 8-wide heads, as real models'
    # 40 to 160 are multiples of 8.
    unet = model.unet
    x = torch.randn(2, 4, 16, 16, device=device, dtype=torch.float16)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, device=device, dtype=torch.float16)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.no_grad(), torch.profiler.profile(activities=activities) as prof:
        unet(x, torch.tensor([500.0], device=device), encoder_hidden_states=context)
        if device.type == "cuda":
            torch.cuda.synchronize()
    ops = sorted({e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")})
    record_property("sdpa_ops", ",".join(ops))
    fused = [op for op in ops if "math" not in op]
    assert fused, f"only the math fallback ran: {ops}"


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_gpu_fp16_images_match_cpu_fp32_images(make, gpu_plan, family, record_property):
    request = params(width=128, height=128, steps=20, batch_size=2, save_images=False)  # CPU noise: the same on both
    gpu = pixels(make(gpu_plan, CHECKPOINTS[family]).txt2img(request))
    cpu = pixels(make(devices.plan(["all"], skip_cuda_test=True), CHECKPOINTS[family]).txt2img(request))
    for i, (a, b) in enumerate(zip(gpu, cpu)):
        diff, distance = np.abs(a - b), psnr(a, b)
        figures = {"max": float(diff.max()), "mean": round(float(diff.mean()), 4), "psnr_db": round(distance, 2)}
        record_property(f"image{i}_vs_cpu_fp32", figures)
        assert figures["mean"] <= MEAN_DIFF_MAX and figures["max"] <= MAX_DIFF_MAX and distance >= PSNR_MIN_DB, figures


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_fp8_weights_compute_in_fp16_and_give_the_image_of_the_model_rounded_to_fp8(make, gpu_plan, family):
    """A1111's FP8 weight (fp8_storage) where it is used, on a GPU: the U-Net's and the text encoders' convolutions and
    linear layers rest in float8_e4m3fn, half their fp16 memory, and compute in fp16 (as under A1111's autocast).
    The image is that of the fp16 model with those values rounded to FP8 (tests/engine/test_fp8.py: bit for bit on
    the CPU; GPU kernels may pick other algorithms between two loads, so a small bound here)."""
    engine = make(gpu_plan, CHECKPOINTS[family])
    request = dict(width=128, height=128, steps=8, save_images=False)
    plain = engine.load_checkpoint(CHECKPOINTS[family])
    fp16_bytes = low_memory.weight_bytes(plain.unet)
    with torch.no_grad():
        for module in (plain.unet, plain.text.text_model):
            for layer in module.modules():
                if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                    for p in layer.parameters(recurse=False):
                        p.data = p.data.to(torch.float8_e4m3fn).to(p.dtype)
    rounded = engine.txt2img(params(**request))
    eight = engine.txt2img(params(**request, override_settings={"fp8_storage": "Enable"}))
    model = engine.checkpoints.current
    assert model.fp8.on and model.unet.conv_in.weight.dtype == torch.float8_e4m3fn
    assert low_memory.compute_dtype(model.unet) == torch.float16
    assert low_memory.weight_bytes(model.unet) < 0.55 * fp16_bytes
    assert "FP8 weight: Enable" in eight.infotexts[0]
    a, b = pixels(rounded)[0], pixels(eight)[0]
    assert np.abs(a - b).mean() <= MEAN_DIFF_MAX and np.abs(a - b).max() <= MAX_DIFF_MAX
