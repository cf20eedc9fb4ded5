"""A1111's FP8 weight (settings fp8_storage, cache_fp16_weight): the convolutions' and linear layers' weights and
biases of the U-Net and the text encoders rest in float8_e4m3fn and are widened as each layer runs. A job's image is
then exactly the image of the same model with those values rounded to FP8 (the computation is unchanged), in a
quarter of their float32 memory. Where A1111 is restated, the source is modules/sd_models.py (check_fp8,
load_model_weights: every Conv2d and Linear outside first_stage_model, weights and biases), processing.py (the two
infotext keys) and infotext_utils.py (the keys' defaults on paste); extensions-builtin/Lora/networks.py for the
float16 copies LoRA starts from."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from modules import infotext
from modules.generation.params import GenerationParams
from modules.models import low_memory
from tests.engine.test_extra_networks import kohya_lora, write_lora
from tests.support import tiny_models
from tests.support.engine import make_engine

FP8 = torch.float8_e4m3fn


@pytest.fixture()
def engine(data_dir):
    e = make_engine(data_dir, checkpoint="sd1.safetensors")
    yield e
    e.queue.stop()


def gen(engine, fp8: str = "Disable", prompt: str = "a red circle", copies: bool = False, **kw):
    base = dict(prompt=prompt, negative_prompt="green", width=64, height=64, steps=4, sampler_name="Euler a",
                seed=5, override_settings={"fp8_storage": fp8, "cache_fp16_weight": copies,
                                           **kw.pop("override_settings", {})})
    return engine.txt2img(GenerationParams(**{**base, **kw}))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def fp8_layers(model):
    for module in (model.unet, model.text.text_model):
        for layer in module.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                yield layer


def test_fp8_weights_give_the_image_of_the_model_rounded_to_fp8_in_a_quarter_of_the_memory(engine):
    plain = gen(engine)
    full = engine.checkpoints.current
    full_bytes = low_memory.weight_bytes(full.unet)
    # the reference: the float32 model in use, its layers' values rounded to FP8 in place (it computes as before)
    with torch.no_grad():
        for layer in fp8_layers(full):
            for p in layer.parameters(recurse=False):
                p.data = p.data.to(FP8).to(p.dtype)
    rounded = gen(engine)
    assert engine.checkpoints.current is full  # the same settings: the model in use, not read again
    assert not np.array_equal(pixels(plain), pixels(rounded))  # the rounding shows

    eight = gen(engine, "Enable")
    model = engine.checkpoints.current
    assert model is not full and model.fp8.on and full.released  # read again from the file, as A1111 does
    assert np.array_equal(pixels(eight), pixels(rounded))
    assert {p.dtype for p in model.unet.conv_in.parameters()} == {FP8}  # weight and bias, as A1111's module.to
    assert {p.dtype for p in model.unet.conv_norm_out.parameters()} == {torch.float32}
    assert {p.dtype for p in model.text.text_model.encoder.layers[0].mlp.parameters()} == {FP8}
    assert model.text.text_model.embeddings.token_embedding.weight.dtype == torch.float32
    assert not low_memory.holds_fp8(model.vae)  # the VAE is left as it is
    assert low_memory.compute_dtype(model.unet) == torch.float32
    assert low_memory.weight_bytes(model.unet) < 0.27 * full_bytes  # the norms' few values stay in float32

    # the infotext says so, after Model, as A1111 writes it; a job without FP8 says nothing
    assert "Model: sd1, FP8 weight: Enable, Cache FP16 weight for LoRA: False, " in eight.infotexts[0]
    assert "FP8" not in plain.infotexts[0]
    pasted = infotext.parse_with_defaults(eight.infotexts[0])
    assert pasted["FP8 weight"] == "Enable" and str(pasted["Cache FP16 weight for LoRA"]) == "False"
    older = eight.infotexts[0].replace("Cache FP16 weight for LoRA: False, ", "")  # before A1111 wrote that key
    assert infotext.parse_with_defaults(older)["Cache FP16 weight for LoRA"] is False
    assert infotext.parse_with_defaults(plain.infotexts[0])["FP8 weight"] == "Disable"  # A1111's default on paste
    assert "Cache FP16 weight for LoRA" not in infotext.parse_with_defaults(plain.infotexts[0])

    again = gen(engine)  # off again: read from the file, the float32 picture exactly
    assert not engine.checkpoints.current.fp8.on and np.array_equal(pixels(again), pixels(plain))


def test_a_16_bit_checkpoint_is_rounded_from_its_own_values(data_dir):
    engine = make_engine(data_dir, checkpoint="sd1-fp16.safetensors")
    try:
        gen(engine)
        model = engine.checkpoints.current  # its text encoders rest in the file's float16 (exact storage)
        with torch.no_grad():
            for layer in fp8_layers(model):
                for p in layer.parameters(recurse=False):
                    p.data = p.data.to(FP8).to(p.dtype)
        rounded = gen(engine)
        assert np.array_equal(pixels(gen(engine, "Enable")), pixels(rounded))
        # with low-memory mode the other large layers rest in 16 bits: the same values, so the same image
        low = gen(engine, "Enable", override_settings={"low_memory": "On"})
        model = engine.checkpoints.current
        assert model.low_memory and model.fp8.on
        assert model.unet.conv_in.weight.dtype == FP8
        model.text_ready()  # parked after the prompts, FP8 weights included
        assert model.text.text_model.embeddings.token_embedding.weight.dtype == torch.float16
        assert np.array_equal(pixels(low), pixels(rounded))
    finally:
        engine.queue.stop()


def test_lora_on_fp8_weights_comes_off_exactly_and_float16_copies_are_its_start(engine):
    gen(engine, "Enable")
    write_lora(engine, "eight", kohya_lora(engine.checkpoints.current, seed=3, alpha=4.0))
    without = gen(engine, "Enable")
    with_lora = gen(engine, "Enable", prompt="a red circle <lora:eight:1>")
    assert not np.array_equal(pixels(without), pixels(with_lora))
    assert np.array_equal(pixels(gen(engine, "Enable")), pixels(without))  # taken out exactly

    model = engine.checkpoints.current
    copies_off = low_memory.weight_bytes(model.unet)
    copied = gen(engine, "Enable", copies=True, prompt="a red circle <lora:eight:1>")
    model = engine.checkpoints.current
    assert model.fp8.fp16_copies  # another way of holding it: read again
    assert low_memory.weight_bytes(model.unet) > 2.5 * copies_off  # the float16 copies are what it costs
    assert "Cache FP16 weight for LoRA: True" in copied.infotexts[0]
    # the LoRA's sum starts from the float16 values instead of the FP8 ones: another image; without a LoRA the same
    assert not np.array_equal(pixels(copied), pixels(with_lora))
    assert np.array_equal(pixels(gen(engine, "Enable", copies=True)), pixels(without))
    assert low_memory.fp16_copy(model.unet.conv_in, "weight").dtype == torch.float16
    model.release()  # a released model frees its copies too
    assert low_memory.fp16_copy(model.unet.conv_in, "weight") is None


def test_enable_for_sdxl_leaves_other_models_as_they_are(tmp_path, tiny_dir):
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for name in ("sd1.safetensors", "sd1.yaml"):
        shutil.copy(tiny_dir / name, folder / name)
    tiny_models.build("sdxl", seed=3).write(folder / "sdxl.safetensors")
    engine = make_engine(tmp_path, checkpoint="sd1.safetensors")
    try:
        plain = gen(engine)
        sd1 = gen(engine, "Enable for SDXL")
        assert not engine.checkpoints.current.fp8.on and "FP8" not in sd1.infotexts[0]
        assert np.array_equal(pixels(plain), pixels(sd1))
        xl = dict(override_settings={"sd_model_checkpoint": "sdxl.safetensors"})
        sdxl = gen(engine, "Enable for SDXL", **xl)
        model = engine.checkpoints.current
        assert model.family.name == "sdxl" and model.fp8.on
        assert model.text.text_model.clip_g.text_model.encoder.layers[0].mlp.fc1.weight.dtype == FP8
        assert "FP8 weight: Enable for SDXL" in sdxl.infotexts[0]
        assert not np.array_equal(pixels(sdxl), pixels(gen(engine, **xl)))
    finally:
        engine.queue.stop()


def test_the_xyz_plots_fp8_mode_axis_gives_each_cells_weights(engine):
    """A1111's X/Y/Z axis "FP8 mode" (its apply_override("fp8_storage")): each cell a job with that setting."""
    axes = [a.label for a in engine.scripts.xyz_axes("txt2img")]
    request = GenerationParams(prompt="a red circle", negative_prompt="green", width=64, height=64, steps=4,
                               sampler_name="Euler a", seed=5)
    result = engine.submit_script("txt2img", "X/Y/Z plot", request,
                                  [axes.index("FP8 mode"), "", ["Disable", "Enable"], 0, "", [], 0, "", [],
                                   True, True]).wait()
    assert ["FP8 weight: Enable" in t for t in result.infotexts] == [False, True]
    assert np.array_equal(pixels(gen(engine)), np.asarray(result.images[0], dtype=np.int16))
    assert np.array_equal(pixels(gen(engine, "Enable")), np.asarray(result.images[1], dtype=np.int16))
