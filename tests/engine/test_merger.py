"""The Checkpoint Merger: the formulas tensor by tensor, A1111's names and metadata, the inpainting-A rule, family
and overwrite refusals, nothing left behind by a failure, and a merged file that loads and generates."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from modules.engine import BadRequest
from modules.hashing import sha256_of_file
from modules.jobs import JobInterrupted
from modules.models import checkpoint_file, ldm_export, merge
from modules.services.merger import MergeForm
from tests.support import tiny_models
from tests.support.engine import make_engine
from tests.support.generation import params

CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"


@pytest.fixture(scope="module")
def more_models(tmp_path_factory):
    """Two more SD 1.x models (B; C in fp16), an SDXL one, and a VAE file in LDM layout without the prefix."""
    d = tmp_path_factory.mktemp("merge-inputs")
    tiny_models.build("sd1", seed=4).write(d / "b.safetensors")
    tiny_models.build("sd1", seed=5).write(d / "c.safetensors", dtype=torch.float16)
    tiny_models.build("sdxl", seed=7).write(d / "xl.safetensors")
    vae = tiny_models.build("sd1", seed=8).vae
    ldm_export.save(d / "other.vae.safetensors",
                    ldm_export.vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels), prefix=""))
    ldm_export.save(d / "diffusers-layout.safetensors", vae.state_dict())  # as some standalone VAE files are
    return d


@pytest.fixture()
def engine(data_dir, more_models):
    folder = data_dir / "models" / "Stable-diffusion"
    for name in ("b.safetensors", "b.yaml", "c.safetensors", "c.yaml", "xl.safetensors", "xl.yaml"):
        shutil.copy(more_models / name, folder / name)
    (data_dir / "models" / "VAE").mkdir(parents=True, exist_ok=True)
    for name in ("other.vae.safetensors", "diffusers-layout.safetensors"):
        shutil.copy(more_models / name, data_dir / "models" / "VAE" / name)
    e = make_engine(data_dir)
    yield e
    e.queue.stop()


def tensors(path):
    return checkpoint_file.read_state_dict(path)


def test_weighted_sum_is_the_formula_with_a1111s_name_and_recipe(engine, data_dir):
    folder = data_dir / "models" / "Stable-diffusion"
    result = engine.merge_checkpoints(MergeForm("sd1.safetensors", "b.safetensors", multiplier=0.3))
    assert result.path == folder / "0.7(sd1) + 0.3(b).safetensors"
    assert result.message == f"Checkpoint saved to {result.path}"
    a, b, out = tensors(folder / "sd1.safetensors"), tensors(folder / "b.safetensors"), load_file(result.path)
    assert out.keys() == a.keys()
    merged = 0
    for key, value in out.items():
        if "model" in key and key not in merge.SKIP_ON_MERGE:
            assert torch.equal(value, (1 - 0.3) * a[key] + 0.3 * b[key]), key
            merged += 1
        else:  # the schedule buffers, CLIP's integer position ids: A's
            assert torch.equal(value, a[key]), key
        assert value.dtype == a[key].dtype
    assert merged > 100
    with safe_open(str(result.path), "pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == "pt"
    recipe = json.loads(metadata["sd_merge_recipe"])
    sha_a, sha_b = sha256_of_file(folder / "sd1.safetensors"), sha256_of_file(folder / "b.safetensors")
    assert recipe["type"] == "webui" and recipe["interp_method"] == "Weighted sum" and recipe["multiplier"] == 0.3
    assert (recipe["primary_model_hash"], recipe["secondary_model_hash"], recipe["tertiary_model_hash"]) == (
        sha_a, sha_b, None)
    assert recipe["config_source"] == 0 and recipe["is_inpainting"] is False
    models = json.loads(metadata["sd_merge_models"])
    assert models[sha_a]["name"] == "sd1.safetensors" and models[sha_b]["name"] == "b.safetensors"
    assert len(models[sha_a]["legacy_hash"]) == 8
    # listed at once, and A's YAML came with it ("A, B or C": A has one)
    assert any(i.name == result.path.name for i in engine.checkpoints.list())
    assert result.path.with_suffix(".yaml").read_text() == (folder / "sd1.yaml").read_text()


def test_add_difference_of_fp16_files_is_the_formula_rounded_once(engine, data_dir):
    folder = data_dir / "models" / "Stable-diffusion"
    result = engine.merge_checkpoints(MergeForm("sd1-fp16.safetensors", "b.safetensors", "c.safetensors",
                                                interp_method="Add difference", multiplier=0.5,
                                                config_source="Don't"))
    assert result.path.name == "sd1-fp16 + 0.5(b - c).safetensors"
    assert not result.path.with_suffix(".yaml").exists()
    a, b, c = (tensors(folder / n) for n in ("sd1-fp16.safetensors", "b.safetensors", "c.safetensors"))
    out = load_file(result.path)
    key = "model.diffusion_model.out.2.weight"
    assert (a[key].dtype, b[key].dtype, c[key].dtype) == (torch.float16, torch.float32, torch.float16)
    for key, value in out.items():
        if "model" in key and key not in merge.SKIP_ON_MERGE:
            expected = a[key].float() + 0.5 * (b[key].float() - c[key].float())
            assert value.dtype == torch.float32, key  # B is 32-bit: the result keeps its precision
            assert torch.equal(value, expected), key


def test_save_as_float16_narrows_weights_but_not_the_schedule(engine, data_dir):
    result = engine.merge_checkpoints(MergeForm("sd1.safetensors", "b.safetensors", multiplier=0.5,
                                                save_as_half=True, custom_name="half-merge"))
    out = load_file(result.path)
    a, b = tensors(data_dir / "models" / "Stable-diffusion" / "sd1.safetensors"), load_file(
        data_dir / "models" / "Stable-diffusion" / "b.safetensors")
    assert result.path.name == "half-merge.safetensors"
    key = "model.diffusion_model.out.2.weight"
    assert out[key].dtype == torch.float16
    assert torch.equal(out[key], (0.5 * a[key] + 0.5 * b[key]).half())
    assert out["alphas_cumprod"].dtype == torch.float32 and torch.equal(out["alphas_cumprod"], a["alphas_cumprod"])


def test_inpainting_a_merges_its_first_four_channels_and_must_be_a(engine, data_dir):
    folder = data_dir / "models" / "Stable-diffusion"
    result = engine.merge_checkpoints(MergeForm("sub/sd1-inpainting.safetensors", "b.safetensors", multiplier=0.25))
    assert result.kind == "inpainting"
    assert result.path.name == "0.75(sub_sd1-inpainting) + 0.25(b).inpainting.safetensors"
    a, b, out = tensors(folder / "sub" / "sd1-inpainting.safetensors"), tensors(folder / "b.safetensors"), \
        load_file(result.path)
    assert out[CONV_IN].shape[1] == 9
    assert torch.equal(out[CONV_IN][:, :4], 0.75 * a[CONV_IN][:, :4] + 0.25 * b[CONV_IN])
    assert torch.equal(out[CONV_IN][:, 4:], a[CONV_IN][:, 4:])
    assert json.loads(load_metadata(result.path)["sd_merge_recipe"])["is_inpainting"] is True
    with pytest.raises(BadRequest, match="A must be the inpainting model"):
        engine.merge_checkpoints(MergeForm("b.safetensors", "sub/sd1-inpainting.safetensors"))


def load_metadata(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


@pytest.mark.parametrize("other, label", [("sd2-v.safetensors", "SD 2.x"), ("xl.safetensors", "SDXL")])
def test_different_families_are_refused_and_nothing_is_written(engine, data_dir, other, label):
    folder = data_dir / "models" / "Stable-diffusion"
    before = sorted(p.name for p in folder.rglob("*"))
    with pytest.raises(BadRequest, match=f"different families: A .* is SD 1.x, B .* is {label}"):
        engine.merge_checkpoints(MergeForm("sd1.safetensors", other))
    assert sorted(p.name for p in folder.rglob("*")) == before


def test_an_existing_file_is_kept_unless_overwriting_is_asked(engine, data_dir):
    first = engine.merge_checkpoints(MergeForm("sd1.safetensors", "b.safetensors", custom_name="mine"))
    stamp = first.path.read_bytes()
    with pytest.raises(BadRequest, match="mine.safetensors already exists"):
        engine.merge_checkpoints(MergeForm("sd1.safetensors", "b.safetensors", custom_name="mine", multiplier=0.9))
    assert first.path.read_bytes() == stamp
    again = engine.merge_checkpoints(MergeForm("sd1.safetensors", "b.safetensors", custom_name="mine",
                                               multiplier=0.9, overwrite=True))
    assert again.path == first.path and again.path.read_bytes() != stamp


@pytest.mark.parametrize("form, message", [
    (MergeForm("sd1.safetensors", "b.safetensors", custom_name="../escape"), "plain file name"),
    (MergeForm("sd1.safetensors", "b.safetensors", custom_name="/tmp/x"), "plain file name"),
    (MergeForm("sd1.safetensors", "nope.safetensors"), "'nope.safetensors' not found"),
    (MergeForm("sd1.safetensors", "b.safetensors", interp_method="Add difference"), "tertiary"),
    (MergeForm("sd1.safetensors", ""), "needs a secondary model"),
    (MergeForm("sd1.safetensors", "b.safetensors", discard_weights="(["), "not a valid regular expression"),
    (MergeForm("sd1.safetensors", "b.safetensors", bake_in_vae="missing.pt"), "VAE 'missing.pt' not found"),
    (MergeForm("sd1.safetensors", "b.safetensors", checkpoint_format="bin"), "Unknown checkpoint format"),
])
def test_bad_requests_are_refused_before_queueing(engine, form, message):
    with pytest.raises(BadRequest, match=message):
        engine.merger.submit(form)


def test_ckpt_output_holds_the_same_tensors(engine, data_dir):
    st = engine.merge_checkpoints(MergeForm("sd1-ckpt.ckpt", "b.safetensors", custom_name="as-st"))
    ck = engine.merge_checkpoints(MergeForm("sd1-ckpt.ckpt", "b.safetensors", custom_name="as-ck",
                                            checkpoint_format="ckpt"))
    assert ck.path.name == "as-ck.ckpt"
    a, b = tensors(st.path), tensors(ck.path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in ck.path.parent.iterdir() if "partial" in p.name]


def test_no_interpolation_bakes_a_vae_and_discards_weights(engine, data_dir, more_models):
    result = engine.merge_checkpoints(MergeForm("sd1.safetensors", interp_method="No interpolation",
                                                bake_in_vae="other.vae.safetensors",
                                                discard_weights=r"^model_ema\.|position_ids$", custom_name="baked"))
    out = load_file(result.path)
    vae = load_file(more_models / "other.vae.safetensors")
    a = tensors(data_dir / "models" / "Stable-diffusion" / "sd1.safetensors")
    assert not any(k.endswith("position_ids") for k in out)
    assert set(out) == {k for k in a if not k.endswith("position_ids")}
    for key, value in vae.items():
        assert torch.equal(out["first_stage_model." + key], value)
    assert torch.equal(out[CONV_IN], a[CONV_IN])
    recipe = json.loads(load_metadata(result.path)["sd_merge_recipe"])
    assert recipe["bake_in_vae"] == "other.vae.safetensors" and recipe["secondary_model_hash"] is None
    # the same VAE in diffusers' layout bakes in the same weights
    again = engine.merge_checkpoints(MergeForm("sd1.safetensors", interp_method="No interpolation",
                                               bake_in_vae="diffusers-layout.safetensors", custom_name="baked2"))
    out2 = load_file(again.path)
    assert all(torch.equal(out2[k], out[k]) for k in out if k.startswith("first_stage_model."))


def test_an_interrupted_merge_leaves_nothing_behind(tmp_path, data_dir):
    folder = data_dir / "models" / "Stable-diffusion"
    before = sorted(p.name for p in folder.iterdir())
    request = merge.MergeRequest(merge.MergeInput(folder / "sd1.safetensors", "sd1.safetensors", "sd1"),
                                 merge.MergeInput(folder / "sd1-fp16.safetensors", "sd1-fp16.safetensors", "sd1-fp16"))
    written = []

    def stop_after_ten():
        if len(written) >= 10:
            raise JobInterrupted()

    with pytest.raises(JobInterrupted):
        merge.merge(request, folder, lambda done, total, key: written.append(key), stop_after_ten)
    assert len(written) == 10
    assert sorted(p.name for p in folder.iterdir()) == before


def test_weight_zero_gives_a_model_that_draws_exactly_as_a(engine):
    """The merged file is a complete checkpoint: listed, loaded, and with M=0 every weight is A's, so its image
    is A's to the bit (and M=1 is B's)."""
    zero = engine.merge_checkpoints(MergeForm("sd1.safetensors", "b.safetensors", multiplier=0.0))
    one = engine.merge_checkpoints(MergeForm("sd1.safetensors", "b.safetensors", multiplier=1.0,
                                             config_source="B"))
    assert one.path.with_suffix(".yaml").read_text() == one.path.with_name("b.yaml").read_text()

    def draw(name):
        engine.load_checkpoint(name)
        return np.asarray(engine.txt2img(params()).images[0])

    a, b = draw("sd1.safetensors"), draw("b.safetensors")
    assert not np.array_equal(a, b)
    assert np.array_equal(draw(zero.title), a)
    assert np.array_equal(draw(one.title), b)
