"""The OpenVINO U-Net backend: converted once per checkpoint and kept on disk, images equal to PyTorch's within
rounding at several sizes, batches and prompt lengths, and what it does not cover (a LoRA, sides that are not a
multiple of 64, Tiling) runs on PyTorch with the same image as without the setting."""

from __future__ import annotations

import logging

import pytest

from modules.generation.params import GenerationParams
from tests.engine.test_extra_networks import kohya_lora, write_lora
from tests.support.engine import make_engine, tiny_data
from tests.support.generation import psnr


@pytest.fixture(scope="module")
def engine(tiny_dir, tmp_path_factory):
    e = make_engine(tiny_data(tiny_dir, tmp_path_factory.mktemp("openvino")))
    yield e
    e.queue.stop()


def gen(engine, backend, **kw):
    base = dict(prompt="a red circle on a blue background", negative_prompt="green", width=64, height=64, steps=4,
                sampler_name="Euler a", seed=7, save_images=False, override_settings={"unet_backend": backend})
    return engine.txt2img(GenerationParams(**{**base, **kw}))


def calls(engine) -> int:
    model = engine.checkpoints.current
    runner = model.openvino if model is not None else None
    return runner.calls if runner is not None else 0


@pytest.mark.parametrize("kw", [
    {},
    {"width": 128, "height": 64, "batch_size": 2},
    {"prompt": "a red circle on a blue background, " * 12},  # past 75 tokens: a 154-token context
    {"cfg_scale": 1.0},  # no negative prompt in the batch: U-Net batch 1
])
def test_images_equal_pytorch_within_rounding(engine, kw, caplog):
    before = calls(engine)
    with caplog.at_level(logging.INFO):
        fast = gen(engine, "OpenVINO", **kw)
    exact = gen(engine, "PyTorch", **kw)
    assert calls(engine) > before and not fast.warnings
    for a, b in zip(fast.images, exact.images):
        assert psnr(a, b) > 40, psnr(a, b)
    assert fast.infotexts == exact.infotexts


def test_converted_once_and_kept_on_disk(engine, caplog):
    gen(engine, "OpenVINO")
    saved = list(engine.paths.openvino_cache.glob("unet-*.xml"))
    assert len(saved) == 1 and saved[0].with_suffix(".bin").is_file()
    assert not list(engine.paths.openvino_cache.glob("*partial*"))
    stamp = saved[0].stat().st_mtime_ns
    # the loaded model drops its compiled U-Net when released; loading again compiles from the file
    engine.load_checkpoint("sd1-fp16.safetensors")
    engine.load_checkpoint("sd1.safetensors")
    assert engine.checkpoints.current.openvino is None
    with caplog.at_level(logging.INFO, logger="modules.models.openvino_unet"):
        gen(engine, "OpenVINO")
    assert calls(engine) > 0
    assert not any("converted" in r.getMessage() for r in caplog.records)
    assert saved[0].stat().st_mtime_ns == stamp


def test_what_it_does_not_cover_runs_on_pytorch_unchanged(engine):
    odd = dict(width=72, height=64)  # a 9x8 latent: not a multiple of 8
    base = gen(engine, "OpenVINO").images[0].tobytes()
    before = calls(engine)
    assert gen(engine, "OpenVINO", **odd).images[0].tobytes() == gen(engine, "PyTorch", **odd).images[0].tobytes()
    assert calls(engine) == before
    model = engine.checkpoints.current
    write_lora(engine, "ov-lora", kohya_lora(model, seed=3))
    with_lora = gen(engine, "OpenVINO", prompt="a red circle <lora:ov-lora:0.8>")
    assert any("a LoRA changes this job's U-Net" in w for w in with_lora.warnings)
    assert calls(engine) == before
    assert with_lora.images[0].tobytes() == gen(engine, "PyTorch", prompt="a red circle <lora:ov-lora:0.8>"
                                                ).images[0].tobytes()
    # Tiling: the converted U-Net pads with zeros, so PyTorch runs the job with its wrap-around convolutions
    tiled = gen(engine, "OpenVINO", tiling=True)
    assert any("Tiling is on" in w for w in tiled.warnings)
    assert calls(engine) == before
    assert tiled.images[0].tobytes() == gen(engine, "PyTorch", tiling=True).images[0].tobytes()
    # token merging: only PyTorch's U-Net merges, so it runs the job (and its infotext says what was done)
    merge = {"unet_backend": "OpenVINO", "token_merging_ratio": 0.5}
    merged = gen(engine, "OpenVINO", override_settings=merge)
    assert any("token merging is on" in w for w in merged.warnings)
    assert calls(engine) == before and "Token merging ratio: 0.5" in merged.infotexts[0]
    assert merged.images[0].tobytes() == gen(engine, "PyTorch", override_settings={
        "unet_backend": "PyTorch", "token_merging_ratio": 0.5}).images[0].tobytes() != base
    # the next job without them is back on OpenVINO, which never saw the LoRA: the same image as before it
    assert gen(engine, "OpenVINO").images[0].tobytes() == base
    assert calls(engine) > before


@pytest.mark.parametrize("family", ["sdxl", "sdxl_refiner"])
def test_sdxl_u_nets_take_their_extra_inputs(tmp_path, family):
    from tests.support import tiny_models

    tiny_models.build(family, seed=5).write(tmp_path / "models" / "Stable-diffusion" / f"{family}.safetensors")
    e = make_engine(tmp_path, f"{family}.safetensors")
    try:
        fast = gen(e, "OpenVINO", width=128, height=64, batch_size=2)
        assert e.checkpoints.current.openvino.calls > 0 and not fast.warnings
        exact = gen(e, "PyTorch", width=128, height=64, batch_size=2)
        for a, b in zip(fast.images, exact.images):
            assert psnr(a, b) > 40, psnr(a, b)
    finally:
        e.queue.stop()


def test_bf16_is_its_own_choice_and_switching_back_gives_f32_again(engine):
    f32 = gen(engine, "OpenVINO").images[0]
    fast = gen(engine, "OpenVINO bf16")
    runner = engine.checkpoints.current.openvino
    assert runner.precision == "bf16" and runner.calls > 0 and not fast.warnings
    assert psnr(fast.images[0], f32) > 20  # close, not exact
    again = gen(engine, "OpenVINO").images[0]
    assert engine.checkpoints.current.openvino.precision == "f32"
    assert again.tobytes() == f32.tobytes()


def test_nans_from_the_openvino_u_net_name_the_backend(tmp_path):
    """A U-Net that answers NaN (here: a weight of the checkpoint is NaN) is named in the error: the OpenVINO
    backend when it ran the call, the checkpoint's weights when PyTorch did."""
    import torch

    from modules.generation.pipeline import NansError
    from tests.support import tiny_models

    model = tiny_models.build("sd1", seed=11)
    with torch.no_grad():
        model.unet.conv_out.bias[0] = float("nan")
    model.write(tmp_path / "models" / "Stable-diffusion" / "broken.safetensors")
    e = make_engine(tmp_path, "broken.safetensors")
    try:
        with pytest.raises(NansError, match=r"OpenVINO U-Net \(f32\).*U-Net backend"):
            gen(e, "OpenVINO")
        with pytest.raises(NansError, match="the checkpoint's weights may be broken"):
            gen(e, "PyTorch")
    finally:
        e.queue.stop()
