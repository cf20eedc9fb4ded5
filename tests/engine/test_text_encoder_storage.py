"""The text encoders of a 16-bit checkpoint stay in the file's type (float16 or bfloat16) and compute in float32
(models/low_memory.py, `exact=True`): the image is the same bit for bit as from the same weights in a float32 file,
with and without a LoRA that changes the text encoder, and the encoders hold half the memory (SD 1.x, SD 2.x and
SDXL's two). SDXL's two encoders are 1.6 GB of a full-size model that way."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from modules.generation.params import GenerationParams
from modules.models import checkpoint_file, ldm_export, low_memory
from tests.engine.test_extra_networks import kohya_lora, write_lora
from tests.support import tiny_models
from tests.support.engine import make_engine


def widened_copy(source, target) -> None:
    """`target`: the 16-bit file `source`'s tensors in float32 (the same values), with its YAML."""
    sd = checkpoint_file.read_state_dict(source)
    ldm_export.save(target, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    shutil.copy(source.with_suffix(".yaml"), target.with_suffix(".yaml"))


@pytest.fixture(scope="module")
def engine(tiny_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("text-storage")
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for name in ("sd1-fp16.safetensors", "sd1-fp16.yaml"):
        shutil.copy(tiny_dir / name, folder / name)
    widened_copy(folder / "sd1-fp16.safetensors", folder / "sd1-wide.safetensors")
    tiny_models.build("sd2", prediction_type="v_prediction", seed=3).write(folder / "sd2-fp16.safetensors",
                                                                          dtype=torch.float16)
    widened_copy(folder / "sd2-fp16.safetensors", folder / "sd2-wide.safetensors")
    tiny_models.build("sdxl", seed=4).write(folder / "xl-bf16.safetensors", dtype=torch.bfloat16)
    widened_copy(folder / "xl-bf16.safetensors", folder / "xl-wide.safetensors")
    e = make_engine(data, checkpoint="sd1-fp16.safetensors")
    yield e
    e.queue.stop()


def gen(engine, checkpoint: str, prompt: str = "a (red:1.3) circle, blue [square]"):
    result = engine.txt2img(GenerationParams(
        prompt=prompt, negative_prompt="green", width=64, height=64, steps=3, sampler_name="Euler a", seed=11,
        save_images=False, override_settings={"sd_model_checkpoint": checkpoint}))
    assert not result.warnings, result.warnings
    return np.asarray(result.images[0])


def large_layer_types(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for sub in module.modules() if isinstance(sub, low_memory.CAST_LAYERS)
            for p in sub.parameters(recurse=False)}


def text_model(engine, checkpoint: str) -> torch.nn.Module:
    model = engine.checkpoints.current
    assert model.info.filename.name == checkpoint and not model.low_memory
    return model.text.text_model


@pytest.mark.parametrize("narrow, wide, kept", [
    ("sd1-fp16.safetensors", "sd1-wide.safetensors", torch.float16),
    ("sd2-fp16.safetensors", "sd2-wide.safetensors", torch.float16),  # OpenCLIP ViT-H, its in-projection split
    ("xl-bf16.safetensors", "xl-wide.safetensors", torch.bfloat16),  # CLIP-L and bigG
])
def test_a_16_bit_files_text_encoders_stay_16_bit_and_give_the_same_image(engine, narrow, wide, kept):
    image = gen(engine, narrow)
    te = text_model(engine, narrow)
    assert large_layer_types(te) == {kept} and low_memory.compute_dtype(te) == torch.float32
    assert {p.dtype for p in engine.checkpoints.current.unet.parameters()} == {torch.float32}
    narrow_bytes = low_memory.weight_bytes(te)

    wide_image = gen(engine, wide)
    te = text_model(engine, wide)
    assert large_layer_types(te) == {torch.float32} and not low_memory.is_stored(te)  # a float32 file: as before
    assert narrow_bytes < 0.52 * low_memory.weight_bytes(te)  # the norms stay in float32
    assert np.array_equal(image, wide_image)


def test_a_text_encoder_lora_is_merged_in_float32_and_taken_out_to_16_bits(engine):
    plain = gen(engine, "sd1-fp16.safetensors")
    te = text_model(engine, "sd1-fp16.safetensors")
    before = {k: v.clone() for k, v in te.state_dict().items()}
    write_lora(engine, "te-only", kohya_lora(engine.checkpoints.current, seed=5, alpha=4.0, which=("te",)))
    prompt = "a (red:1.3) circle, blue [square] <lora:te-only:0.7>"

    with_lora = gen(engine, "sd1-fp16.safetensors", prompt)
    q_proj = next(m for name, m in te.named_modules() if name.endswith("encoder.layers.0.self_attn.q_proj"))
    assert q_proj.weight.dtype == torch.float32  # widened while the change is in it: no rounding to 16 bits
    assert not np.array_equal(plain, with_lora)

    assert np.array_equal(gen(engine, "sd1-fp16.safetensors"), plain)  # taken out exactly
    assert text_model(engine, "sd1-fp16.safetensors") is te  # (the same loaded model)
    assert large_layer_types(te) == {torch.float16}  # and back to 16 bits
    after = te.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())

    assert np.array_equal(with_lora, gen(engine, "sd1-wide.safetensors", prompt))  # as on float32 weights
