"""Loading checkpoints: every family, configs, safety, damaged files, offline."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import socket
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from modules import devices, paths
from modules.generation import context, pipeline
from modules.generation.params import GenerationParams
from modules.models import checkpoint_file, families, ldm_export, loader
from modules.models.checkpoint_file import CheckpointError, NotEnoughMemory
from modules.models.family import TEXT_ENCODER_PREFIXES
from tests.support import tiny_models
from tests.support.engine import make_manager


def detect(path: Path):
    sd = checkpoint_file.read_state_dict(path)
    return families.detect(path, sd, checkpoint_file.read_metadata(path), paths.CONFIGS / "v1-inference.yaml"), sd


def generate(model, seed=1, **kw) -> list:
    params = GenerationParams(prompt="a red circle", width=64, height=64, steps=4, sampler_name="Euler a", **kw)
    params = params.model_copy(update={"seed": seed})
    return [im for batch in pipeline.txt2img(model, context.resolve(params)) for im in batch.images]


# --- every family loads, with weights equal to what was written -------------------------------

@pytest.mark.parametrize("name,label", [
    ("sd1.safetensors", "SD 1.x"),
    ("sd1-fp16.safetensors", "SD 1.x"),
    ("sd1-ckpt.ckpt", "SD 1.x"),
    ("sub/sd1-inpainting.safetensors", "SD 1.x inpainting"),
    ("sd2-v.safetensors", "SD 2.x v-prediction"),
])
def test_every_family_loads_and_generates(manager, name, label):
    info = manager.checkpoints.find(name)
    assert info is not None and info.name == name
    model = manager.get(info)
    assert model.config.label == label
    assert model.config.source == "beside"
    images = generate(model)
    assert images[0].size == (64, 64)


@pytest.mark.parametrize("family,inpainting,prediction", [("sd1", False, "epsilon"), ("sd1", True, "epsilon"),
                                                          ("sd2", False, "v_prediction")])
def test_loaded_weights_equal_written_weights(tmp_path, family, inpainting, prediction):
    tiny = tiny_models.build(family, inpainting, prediction, seed=7)
    path = tiny.write(tmp_path / "m.safetensors")
    config, sd = detect(path)
    built = loader.build(path, sd, config)
    for original, loaded in ((tiny.unet, built.unet), (tiny.vae, built.vae)):
        a, b = original.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368] + [49407] * 71])
    with torch.no_grad():
        if family == "sd1":
            expected = tiny.text_encoder(ids).last_hidden_state
        else:  # SD 2.x uses the penultimate layer of the OpenCLIP tower, then its final layer norm
            hidden = tiny.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
            expected = tiny.text_encoder.final_layer_norm(hidden)
        assert torch.equal(built.text_encoder(ids).last_hidden_state, expected)
    layers = tiny.text_encoder.config.num_hidden_layers
    assert built.text_encoder.config.num_hidden_layers == layers - (family == "sd2")


# --- configs: YAML beside wins; otherwise detection ---------------------------------------------

def test_detection_without_yaml_picks_the_shipped_configs(tmp_path):
    cases = [
        (tiny_models.build("sd1"), {}, "v1-inference.yaml", "epsilon"),
        (tiny_models.build("sd1", inpainting=True), {}, "v1-inpainting-inference.yaml", "epsilon"),
        (tiny_models.build("sd2"), {}, "v2-inference.yaml", None),  # no marker: probe the U-Net after loading
        (tiny_models.build("sd2"), {"modelspec.prediction_type": "v"}, "v2-inference-v.yaml", "v_prediction"),
        (tiny_models.build("sd2"), {"modelspec.architecture": "stable-diffusion-v2-768-v"}, "v2-inference-v.yaml",
         "v_prediction"),
        (tiny_models.build("sd2", inpainting=True), {}, "v2-inpainting-inference.yaml", "epsilon"),
    ]
    for i, (tiny, metadata, yaml_name, prediction) in enumerate(cases):
        path = tiny.write(tmp_path / f"m{i}.safetensors", yaml_beside=False, metadata=metadata)
        config, _ = detect(path)
        assert (config.yaml_path.name, config.prediction_type, config.source) == (yaml_name, prediction, "detected")


def test_v_pred_marker_key_is_detected(tmp_path):
    tiny = tiny_models.build("sd2")
    sd = tiny.state_dict()
    sd["v_pred"] = torch.tensor([])
    ldm_export.save(tmp_path / "m.safetensors", sd)
    config, _ = detect(tmp_path / "m.safetensors")
    assert config.prediction_type == "v_prediction"


def test_yaml_beside_wins_over_detection(tmp_path):
    # The file carries a v-prediction marker, but the YAML beside it says epsilon: the YAML wins.
    tiny = tiny_models.build("sd2", prediction_type="epsilon")
    path = tiny.write(tmp_path / "m.safetensors", metadata={"modelspec.prediction_type": "v"})
    config, _ = detect(path)
    assert config.source == "beside" and config.yaml_path == tmp_path / "m.yaml"
    assert config.prediction_type == "epsilon"


def test_yaml_beside_with_v_parameterization(tmp_path):
    path = tiny_models.build("sd2", prediction_type="v_prediction").write(tmp_path / "m.safetensors")
    assert "parameterization: v" in (tmp_path / "m.yaml").read_text()
    assert detect(path)[0].prediction_type == "v_prediction"


@pytest.mark.parametrize("bias,expected", [(-10.0, "v_prediction"), (10.0, "epsilon")])
def test_sd2_without_yaml_or_marker_is_probed(data_dir, manager, tmp_path, monkeypatch, bias, expected):
    """With neither YAML nor marker, loading runs A1111's probe (one U-Net call at t=999 on a constant
    latent: far below the input means v-prediction) and switches to the matching shipped config."""
    tiny = tiny_models.build("sd2", seed=11)
    with torch.no_grad():  # make the verdict known: the output sits `bias` away from the input
        tiny.unet.conv_out.weight.zero_()
        tiny.unet.conv_out.bias.fill_(bias)
    folder = data_dir / "models" / "Stable-diffusion"
    tiny.write(folder / "probe-me.safetensors", yaml_beside=False)
    # The shipped SD 2.x YAMLs describe full-size shapes; stand in tiny ones under the same names.
    configs = tmp_path / "configs"
    configs.mkdir()
    for name, prediction in (("v2-inference.yaml", "epsilon"), ("v2-inference-v.yaml", "v_prediction")):
        ldm_export.write_yaml(configs / name, tiny_models.build("sd2", prediction_type=prediction).yaml())
    monkeypatch.setattr(families, "CONFIGS", configs)
    manager.checkpoints.refresh()
    model = manager.get(manager.checkpoints.find("probe-me"))
    assert model.config.prediction_type == expected
    assert model.config.yaml_path.name == ("v2-inference-v.yaml" if expected == "v_prediction" else "v2-inference.yaml")


def test_full_size_sd15_layout_loads_with_shipped_config():
    """Real SD 1.5 shapes and key names (no YAML): detection picks v1-inference.yaml and every weight
    finds its place. Tensors are uninitialised (no values needed), so this takes seconds."""
    import yaml
    from diffusers.loaders import single_file_utils as sfu

    original = yaml.safe_load((paths.CONFIGS / "v1-inference.yaml").read_text())
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(sfu.create_unet_diffusers_config_from_ldm(original, {}))
        vae = AutoencoderKL.from_config(sfu.create_vae_diffusers_config_from_ldm(original, {}, scaling_factor=0.18215))
        te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                          num_attention_heads=12, projection_dim=768))
    shapes = ldm_export.checkpoint_state_dict(unet, vae, te, "sd1")
    sd = {k: torch.empty(v.shape, dtype=torch.float16 if v.is_floating_point() else v.dtype) for k, v in shapes.items()}
    # Spot checks against key names and shapes read from real SD 1.x files:
    assert sd["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"].shape == (320, 768)
    assert sd["first_stage_model.decoder.conv_in.weight"].shape == (512, 4, 3, 3)
    assert sd["cond_stage_model.transformer.text_model.embeddings.position_ids"].shape == (1, 77)
    assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in sd  # upsampler slot after a block without attention
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in sd  # ... and after one with attention
    path = Path("/nonexistent/sd15.safetensors")
    config = families.detect(path, sd, {}, paths.CONFIGS / "v1-inference.yaml")
    assert config.yaml_path.name == "v1-inference.yaml" and config.source == "detected"
    built = loader.build(path, sd, config)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert round(count(built.unet) / 1e6, 2) == 859.52
    assert round(count(built.vae) / 1e6, 2) == 83.65
    assert round(count(built.text_encoder) / 1e6, 2) == 123.06


def test_old_text_encoder_layout_and_corrupt_position_ids(tmp_path):
    """Some SD 1.x files lack the `text_model.` level, and some merges carry float position_ids."""
    tiny = tiny_models.build("sd1", seed=5)
    sd = tiny.state_dict()
    prefix = "cond_stage_model.transformer.text_model."
    sd = {(k.replace(prefix, "cond_stage_model.transformer.") if k.startswith(prefix) else k): v for k, v in sd.items()}
    sd["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(77, dtype=torch.float32)[None] * 0.9999
    ldm_export.save(tmp_path / "old.safetensors", sd)
    ldm_export.write_yaml(tmp_path / "old.yaml", tiny.yaml())
    config, loaded = detect(tmp_path / "old.safetensors")
    built = loader.build(tmp_path / "old.safetensors", loaded, config)
    ids = torch.tensor([[49406, 320, 2368] + [49407] * 74])
    with torch.no_grad():
        assert torch.equal(built.text_encoder(ids).last_hidden_state, tiny.text_encoder(ids).last_hidden_state)


# --- refusals and clear errors -------------------------------------------------------------------

def test_sdxl_refiner_keys_pick_the_refiner_config(tmp_path):
    """A1111's test: only `conditioner.embedders.0.model.ln_final.weight` (bigG as the first embedder) is a refiner."""
    torch.save({"state_dict": {"conditioner.embedders.0.model.ln_final.weight": torch.zeros(2),
                               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1, 4, 1, 1)}},
               tmp_path / "xl.ckpt")
    config, _ = detect(tmp_path / "xl.ckpt")
    assert (config.family.name, config.yaml_path.name) == ("sdxl_refiner", "sd_xl_refiner.yaml")


def test_lora_in_checkpoint_folder_gets_a_hint(tmp_path):
    from safetensors.torch import save_file
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4)},
              str(tmp_path / "lora.safetensors"))
    with pytest.raises(CheckpointError, match="not a Stable Diffusion checkpoint.*LoRA"):
        detect(tmp_path / "lora.safetensors")


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_ckpt_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)},
                "payload": _Exploit(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError) as e:
        checkpoint_file.read_state_dict(tmp_path / "evil.ckpt")
    assert "evil.ckpt" in str(e.value) and "system" in str(e.value)
    assert not marker.exists()
    # A plain pickle (non-zip, like very old checkpoints) with the same payload is refused too.
    with open(tmp_path / "evil-legacy.ckpt", "wb") as f:
        pickle.dump(_Exploit(marker), f)
    with pytest.raises(CheckpointError, match="system"):
        checkpoint_file.read_state_dict(tmp_path / "evil-legacy.ckpt")
    assert not marker.exists()


def test_lightning_metadata_in_real_ckpts_is_allowed(tmp_path):
    """Real SD 1.x .ckpt files carry PyTorch Lightning callback state and numpy scalars."""
    import sys
    import types

    import numpy as np

    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__ = module.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    for n in names:
        sys.modules[n] = module if n.endswith("model_checkpoint") else types.ModuleType(n)
    try:
        cb = ModelCheckpoint()
        cb.best_model_score = np.float64(0.25)
        torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": np.int64(470000),
                    "callbacks": {ModelCheckpoint: {"best": np.array([1.0, 2.0])}}, "cb": cb}, tmp_path / "pl.ckpt")
    finally:
        for n in names:
            sys.modules.pop(n, None)
    sd = checkpoint_file.read_state_dict(tmp_path / "pl.ckpt")
    assert list(sd) == ["w"] and torch.equal(sd["w"], torch.ones(2))


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_files_give_clear_errors(tmp_path, tiny_dir, suffix):
    source = tiny_dir / ("sd1.safetensors" if suffix == ".safetensors" else "sd1-ckpt.ckpt")
    data = source.read_bytes()
    target = tmp_path / f"cut{suffix}"
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt"):
        checkpoint_file.read_state_dict(target)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        checkpoint_file.read_state_dict(tmp_path / "empty.safetensors")


def test_safetensors_reader_equals_the_library_and_casts_as_it_reads(tmp_path):
    """Our reader (plain reads, no memory map; see checkpoint_file._read_safetensors) gives what the safetensors
    library gives, for every dtype a checkpoint uses; `cast` converts floating-point tensors only; a header whose
    sizes do not match its shapes is refused by name."""
    from safetensors.torch import load_file, save_file
    tensors = {"f16": torch.randn(3, 5).half(), "bf16": torch.randn(7).bfloat16(), "f32": torch.randn(2, 2, 2),
               "i64": torch.arange(6).reshape(2, 3), "u8": torch.arange(4, dtype=torch.uint8),
               "empty": torch.zeros(0, 4), "scalar": torch.tensor(1.5)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    ours, library = checkpoint_file.read_state_dict(path), load_file(str(path))
    assert ours.keys() == library.keys()
    for k in ours:
        assert ours[k].dtype == library[k].dtype and torch.equal(ours[k], library[k]), k
    cast = checkpoint_file.read_state_dict(path, cast=torch.float32)
    assert {k: v.dtype for k, v in cast.items()} == {**{k: torch.float32 for k in tensors},
                                                     "i64": torch.int64, "u8": torch.uint8}
    assert torch.equal(cast["f16"], tensors["f16"].float()) and torch.equal(cast["bf16"], tensors["bf16"].float())
    # narrowed (low-memory mode's 16-bit read): a module's weights, never a top-level buffer (alphas_cumprod)
    save_file({"model.w": torch.randn(3), "alphas_cumprod": torch.rand(4)}, str(tmp_path / "m.safetensors"))
    narrow = checkpoint_file.read_state_dict(tmp_path / "m.safetensors", cast=torch.float16)
    assert (narrow["model.w"].dtype, narrow["alphas_cumprod"].dtype) == (torch.float16, torch.float32)
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n].replace(b'"shape":[3,5]', b'"shape":[5,5]')
    (tmp_path / "bad.safetensors").write_bytes(bytes(data[:8]) + header + bytes(data[8 + n:]))
    with pytest.raises(CheckpointError, match="bad.safetensors is not a valid .safetensors file .tensor 'f16'"):
        checkpoint_file.read_state_dict(tmp_path / "bad.safetensors")


def test_failed_switch_keeps_previous_model_usable(data_dir, manager):
    good = manager.get(manager.checkpoints.find("sd1.safetensors"))
    before = generate(good)[0].tobytes()
    folder = data_dir / "models" / "Stable-diffusion"
    data = (folder / "sd1.safetensors").read_bytes()
    (folder / "broken.safetensors").write_bytes(data[:1000])
    shutil.copy(folder / "sd1.yaml", folder / "broken.yaml")
    manager.checkpoints.refresh()
    with pytest.raises(CheckpointError):
        manager.get(manager.checkpoints.find("broken.safetensors"))
    assert manager.current is good
    assert generate(manager.current)[0].tobytes() == before


def test_a_switch_that_does_not_fit_beside_the_current_model_releases_it_first(data_dir, caplog):
    """Memory (here: --memory-limit over what the process holds now) decides what a switch keeps. Room for the new
    weights alone but not for both: the current model is released before the read, and a file that then fails says
    so. Not even that: refused before anything is read or released, with what low-memory mode would take. A file
    whose header is already wrong fails before anything is released too."""
    manager = make_manager(data_dir)
    folder = data_dir / "models" / "Stable-diffusion"

    def leave(room: int) -> None:  # what --memory-limit leaves beside what the process holds now
        manager.memory_limit = devices.process_memory(torch.device("cpu")) + room

    try:
        first = manager.get(manager.checkpoints.find("sd1.safetensors"))
        expected = generate(first)[0].tobytes()
        read = checkpoint_file.read_size(folder / "sd1.safetensors", torch.float32, TEXT_ENCODER_PREFIXES)[1]
        assert 0.99 * read < first.weight_bytes() <= read  # what it holds: what was read, less a few file buffers
        data = (folder / "sd1.safetensors").read_bytes()
        (folder / "cut.safetensors").write_bytes(data[:len(data) // 2])
        tiny_models.build("sd1", seed=4).write(folder / "misfit.safetensors", yaml_beside=False)
        shutil.copy(paths.CONFIGS / "v1-inference.yaml", folder / "misfit.yaml")  # full-size config, tiny weights
        manager.checkpoints.refresh()

        leave(64 << 20)  # less than FIT_MARGIN: nothing fits
        fp16 = manager.checkpoints.find("sd1-fp16.safetensors")
        with pytest.raises(NotEnoughMemory, match=r"sd1-fp16.safetensors does not fit in memory: its weights take "
                                                  r"\d+ MiB once read, and \d+ MiB is free under --memory-limit "
                                                  r"with sd1.safetensors released. Low-memory mode .* keeps its "
                                                  r"weights in 16 bits: \d+ MiB."):
            manager.get(fp16)
        assert manager.current is first and not first.released and generate(first)[0].tobytes() == expected

        leave(600 << 20)  # room for the tiny model alone, less than READ_MARGIN beside the current one
        with pytest.raises(CheckpointError, match="truncated"):
            manager.get(manager.checkpoints.find("cut.safetensors"))
        assert manager.current is first and not first.released
        with caplog.at_level(logging.WARNING, logger="modules.models.manager"):
            second = manager.get(fp16)
        assert "is free beside sd1.safetensors (--memory-limit): releasing sd1.safetensors before reading it" \
            in caplog.text
        assert first.released and first.weight_bytes() == 0 and manager.current is second and not second.released
        with pytest.raises(CheckpointError, match="do not fit the config misfit.yaml.*sd1-fp16.safetensors was "
                                                  "released first to make room for it; a job that uses it loads it"):
            manager.get(manager.checkpoints.find("misfit.safetensors"))
        assert manager.current is None and second.released

        manager.memory_limit = None
        again = manager.get(manager.checkpoints.find("sd1.safetensors"))
        assert generate(again)[0].tobytes() == expected
    finally:
        manager.checkpoints.hasher.stop()


def test_read_size_is_what_the_read_holds(tiny_dir, monkeypatch):
    """read_size (the room a load checks for) equals the bytes read_state_dict then holds, cast and kept as the
    model manager reads; a pickle counts as at least its file size and at most twice that when it may be widened.
    The reader gives the same tensors where os.preadv is missing (Windows: one thread's seek and read at a time)."""
    for name in ("sd1.safetensors", "sd1-fp16.safetensors"):
        for cast, keep in ((None, ()), (torch.float32, ()), (torch.float32, TEXT_ENCODER_PREFIXES),
                           (torch.float16, ())):
            sd = checkpoint_file.read_state_dict(tiny_dir / name, cast, keep)
            held = sum(t.numel() * t.element_size() for t in sd.values())
            assert checkpoint_file.read_size(tiny_dir / name, cast, keep) == (held, held), (name, cast, keep)
    ckpt = tiny_dir / "sd1-ckpt.ckpt"
    size = ckpt.stat().st_size
    assert checkpoint_file.read_size(ckpt, torch.float32) == (size, 2 * size)
    assert checkpoint_file.read_size(ckpt, torch.float16) == (size, size)
    expected = checkpoint_file.read_state_dict(tiny_dir / "sd1-fp16.safetensors", torch.float32)
    monkeypatch.delattr(checkpoint_file.os, "preadv")
    serial = checkpoint_file.read_state_dict(tiny_dir / "sd1-fp16.safetensors", torch.float32)
    assert list(serial) == list(expected) and all(torch.equal(serial[k], expected[k]) for k in expected)


def test_config_that_does_not_fit_names_the_problem(tmp_path):
    tiny = tiny_models.build("sd1")
    path = tiny.write(tmp_path / "m.safetensors", yaml_beside=False)
    shutil.copy(paths.CONFIGS / "v1-inference.yaml", tmp_path / "m.yaml")  # full-size config, tiny weights
    config, sd = detect(path)
    with pytest.raises(CheckpointError, match="do not fit the config m.yaml"):
        loader.build(path, sd, config)


def test_loader_never_touches_the_network(data_dir, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manager = make_manager(data_dir)  # also loads the tokenizer
    for name in ("sd1.safetensors", "sd2-v.safetensors", "sub/sd1-inpainting.safetensors"):
        assert generate(manager.get(manager.checkpoints.find(name)))
