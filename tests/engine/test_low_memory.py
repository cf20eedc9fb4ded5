"""Low-memory mode (setting `low_memory`, flags --lowram / --medvram / --lowvram / --medvram-sdxl): the weights rest in
16 bits and each layer computes in 32 bits, so a 16-bit checkpoint gives the very same image in about half the
weight memory; LoRA, external VAEs and SDXL work in it, and changing the mode loads the model again."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from modules import bootstrap, cmd_args
from modules.generation.params import GenerationParams
from modules.models import low_memory
from tests.engine.test_extra_networks import kohya_lora, write_lora
from tests.support import tiny_models
from tests.support.engine import make_engine, started
from tests.support.generation import psnr


@pytest.fixture()
def engine(data_dir):
    e = make_engine(data_dir, checkpoint="sd1-fp16.safetensors")
    yield e
    e.queue.stop()


def gen(engine, mode: str, prompt: str = "a red circle", **kw):
    base = dict(prompt=prompt, negative_prompt="green", width=64, height=64, steps=4, sampler_name="Euler a",
                seed=5, override_settings={"low_memory": mode, **kw.pop("override_settings", {})})
    return engine.txt2img(GenerationParams(**{**base, **kw}))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_a_16_bit_checkpoint_gives_the_same_image_in_half_the_weight_memory(engine):
    plain = gen(engine, "Off")
    full = engine.checkpoints.current
    assert not full.low_memory
    full_bytes = low_memory.weight_bytes(full.unet)
    text_bytes = low_memory.weight_bytes(full.text.text_model)  # 16 bits in both modes (a 16-bit file: see below)
    low = gen(engine, "On")  # the mode changed: loaded again
    model = engine.checkpoints.current
    assert model is not full and model.low_memory and full.released  # the full-size one was freed
    assert low_memory.weight_bytes(model.unet) < 0.52 * full_bytes  # the norms (a few KB) stay in 32 bits
    assert low_memory.weight_bytes(model.text.text_model) == text_bytes
    assert low_memory.compute_dtype(model.unet) == torch.float32  # what the layers compute in
    assert {p.dtype for p in model.unet.conv_in.parameters()} == {torch.float16}  # what they rest in
    assert {p.dtype for p in model.unet.conv_norm_out.parameters()} == {torch.float32}
    assert np.array_equal(pixels(plain), pixels(low))
    assert plain.infotexts[0] == low.infotexts[0]  # not an infotext matter (A1111 writes nothing either)
    assert gen(engine, "On", seed=6).images and engine.checkpoints.current is model  # no reload while it holds


def test_low_memory_mode_decodes_in_small_tiles(engine):
    """Auto tiling becomes tiles of 256 pixels (the same image up to float rounding); a user's Never is obeyed."""
    size = dict(width=320, height=320, steps=2)
    plain, low = gen(engine, "Off", **size), gen(engine, "On", **size)
    assert "VAE tiling" not in plain.infotexts[0] and "VAE tiling: True" in low.infotexts[0]
    assert np.abs(pixels(plain) - pixels(low)).max() <= 1
    never = gen(engine, "On", **size, override_settings={"vae_tiling": "Never"})
    assert "VAE tiling" not in never.infotexts[0] and np.array_equal(pixels(never), pixels(plain))


def test_a_32_bit_checkpoint_is_rounded_to_16_bits_once(engine):
    plain = gen(engine, "Off", override_settings={"sd_model_checkpoint": "sd1.safetensors"})
    low = gen(engine, "On", override_settings={"sd_model_checkpoint": "sd1.safetensors"})
    distance = psnr(pixels(plain), pixels(low))
    assert distance > 40, (distance, np.abs(pixels(plain) - pixels(low)).max())


def test_lora_applies_and_comes_off_in_low_memory_mode(engine):
    gen(engine, "On")
    model = engine.checkpoints.current
    write_lora(engine, "lowmem", kohya_lora(model, seed=3, alpha=4.0))
    without = gen(engine, "On")
    with_lora = gen(engine, "On", prompt="a red circle <lora:lowmem:1>")
    plain_lora = gen(engine, "Off", prompt="a red circle <lora:lowmem:1>")
    assert not np.array_equal(pixels(without), pixels(with_lora))  # it changed the image
    assert np.abs(pixels(with_lora) - pixels(plain_lora)).max() <= 8  # merged into 16-bit weights: rounded
    gen(engine, "On", prompt="a red circle <lora:lowmem:1>")
    assert np.array_equal(pixels(gen(engine, "On")), pixels(without))  # taken out exactly


def test_an_external_vae_is_stored_the_same_way(engine, data_dir, tiny_dir):
    vae_dir = data_dir / "models" / "VAE"
    vae_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny_dir / "sd1-fp16.safetensors", vae_dir / "other.vae.safetensors")  # its first_stage_model.*
    engine.checkpoints.refresh_vaes()
    plain = gen(engine, "Off", override_settings={"sd_vae": "other.vae.safetensors"})
    low = gen(engine, "On", override_settings={"sd_vae": "other.vae.safetensors"})
    vae = engine.checkpoints.current.vae
    assert low_memory.is_stored(vae) and {p.dtype for p in vae.decoder.conv_in.parameters()} == {torch.float16}
    assert np.array_equal(pixels(plain), pixels(low))


def test_sdxl_only_applies_to_sdxl_models(tmp_path, tiny_dir):
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for name in ("sd1-fp16.safetensors", "sd1-fp16.yaml"):
        shutil.copy(tiny_dir / name, folder / name)
    tiny_models.build("sdxl", seed=3).write(folder / "sdxl.safetensors", dtype=torch.float16)
    engine = make_engine(tmp_path, checkpoint="sd1-fp16.safetensors")
    try:
        gen(engine, "SDXL only")
        assert not engine.checkpoints.current.low_memory
        plain = gen(engine, "Off", override_settings={"sd_model_checkpoint": "sdxl.safetensors"})
        low = gen(engine, "SDXL only", override_settings={"sd_model_checkpoint": "sdxl.safetensors"})
        model = engine.checkpoints.current
        assert model.family.name == "sdxl" and model.low_memory
        clip_g = model.text.text_model.clip_g
        assert {p.dtype for p in clip_g.text_model.encoder.layers[0].mlp.parameters()} == {torch.float16}
        assert np.array_equal(pixels(plain), pixels(low))
        empty = dict(negative_prompt="", override_settings={"sd_model_checkpoint": "sdxl.safetensors"})
        assert np.array_equal(pixels(gen(engine, "Off", **empty)), pixels(gen(engine, "On", **empty)))  # zeros
    finally:
        engine.queue.stop()


@pytest.mark.parametrize("flags, mode", [(["--medvram"], "On"), (["--lowram"], "On"), (["--lowvram"], "On"),
                                         (["--medvram-sdxl"], "SDXL only"), ([], "Off")])
def test_a1111s_memory_flags_turn_it_on(flags, mode):
    assert bootstrap.low_memory_flag(cmd_args.parse(flags)) == mode


def test_the_flag_loads_the_start_up_model_in_low_memory_mode(data_dir):
    with started("--data-dir", str(data_dir), "--medvram", "--no-builtin-model", "--skip-torch-cuda-test") as engine:
        engine.options.update({"sd_model_checkpoint": "sd1-fp16.safetensors"})
        assert engine.checkpoints.low_memory_mode() == "On"  # the saved setting is Off: the flag wins
        model = engine.load_checkpoint("sd1-fp16.safetensors")
        assert model.low_memory
        assert engine.txt2img(GenerationParams(prompt="a red circle", width=64, height=64, steps=2)).images
