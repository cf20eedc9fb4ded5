"""Low-memory mode (setting `low_memory`, flags --lowram / --medvram / --lowvram / --medvram-sdxl): the weights rest in
16 bits and each layer computes in 32 bits, so a 16-bit checkpoint gives the very same image in about half the
weight memory; LoRA, external VAEs and SDXL work in it, and changing the mode loads the model again."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers.models.activations import GEGLU

from modules import bootstrap, cmd_args
from modules.generation.params import GenerationParams
from modules.models import low_memory, optimizations
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
    assert low_memory.weight_bytes(model.text.text_model) < 0.01 * text_bytes  # parked after the prompts (below)
    model.text_ready()
    assert low_memory.weight_bytes(model.text.text_model) == text_bytes
    assert low_memory.compute_dtype(model.unet) == torch.float32  # what the layers compute in
    assert {p.dtype for p in model.unet.conv_in.parameters()} == {torch.float16}  # what they rest in
    assert {p.dtype for p in model.unet.conv_norm_out.parameters()} == {torch.float32}
    # a GEGLU is cast as one unit (hooks on it, none on its proj), so on a CPU it runs fused as in the default mode
    geglu = [m for m in model.unet.modules() if isinstance(m, GEGLU)]
    assert geglu and all(m._forward_pre_hooks and not m.proj._forward_pre_hooks for m in geglu)
    assert all(type(m) is optimizations.OneDnnGEGLU for m in geglu) == optimizations.onednn_linear_works()
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
    model.text_ready()  # (parked since the prompts were encoded) for the layers' shapes
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


# --- the text encoders parked while the U-Net runs ---------------------------------------------------

def text_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.text.text_model.state_dict().items()}


def test_the_text_encoders_are_parked_between_prompts_and_read_back_exactly(engine):
    plain = gen(engine, "Off")
    first = gen(engine, "On")
    model = engine.checkpoints.current
    parked = model.parked_text
    assert parked.parked and low_memory.weight_bytes(model.text.text_model) < 100_000  # the norms stay (a few KB)
    assert list(engine.paths.parked_weights.iterdir()) == []  # the file has no name: nothing to clean up
    model.text_ready()
    before = text_state(model)
    model.park_text()
    model.text_ready()
    after = text_state(model)
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())

    runs: list[int] = []  # the CLIP's token embedding's weight size at each call
    embedding = next(m for n, m in model.text.text_model.named_modules() if n.endswith("token_embedding"))
    handle = embedding.register_forward_pre_hook(lambda m, _args: runs.append(m.weight.numel()))
    try:
        hires = gen(engine, "On", width=64, height=64, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2,
                    denoising_strength=0.5)
    finally:
        handle.remove()
    assert len(runs) >= 2 and all(n == embedding.num_embeddings * embedding.embedding_dim for n in runs)  # read back
    assert parked.parked and hires.images  # for the second pass's prompts too, then parked again
    assert np.array_equal(pixels(first), pixels(gen(engine, "On"))) and np.array_equal(pixels(first), pixels(plain))
    gen(engine, "Off")  # the mode changed: the low-memory model is released, its file closed
    assert model.released and parked._file is None


def test_a_lora_on_the_text_encoder_keeps_it_in_memory_while_it_applies(engine):
    gen(engine, "On")
    model = engine.checkpoints.current
    model.text_ready()
    full = low_memory.weight_bytes(model.text.text_model)
    write_lora(engine, "te-lowmem", kohya_lora(model, seed=4, alpha=4.0, which=("te",)))
    with_lora = gen(engine, "On", prompt="a red circle <lora:te-lowmem:1>")
    assert not model.parked_text.parked and low_memory.weight_bytes(model.text.text_model) == full
    without = gen(engine, "On")  # the change taken out: parked again, its backups dropped
    assert model.parked_text.parked and not np.array_equal(pixels(with_lora), pixels(without))
    assert np.array_equal(pixels(gen(engine, "On", prompt="a red circle <lora:te-lowmem:1>")), pixels(with_lora))


def test_weights_that_cannot_be_parked_stay_in_memory(tmp_path, caplog):
    layer = low_memory.store(torch.nn.Linear(4, 4), torch.float32)
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the folder to park in cannot be made
    parked = low_memory.ParkedWeights(layer, blocked / "parked")
    with caplog.at_level("WARNING"):
        assert parked.park() is False
    assert not parked.parked and layer.weight.numel() == 16 and "stay in memory" in caplog.text
    assert layer(torch.ones(1, 4)).shape == (1, 4)
