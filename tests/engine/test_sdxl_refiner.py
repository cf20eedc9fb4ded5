"""The SDXL refiner on tiny checkpoints in the real LDM key layout: its detection and conditioning (against
transformers' model on the file's own weights), and A1111's switch to a refiner checkpoint mid-sampling
(`modules/sd_samplers_common.py` `apply_refiner`, A1111 v1.10): when it happens for several samplers and
schedules, by noise level or by sampling steps, that each batch and each Hires. fix pass starts on the base
(`processing.py` reloads the model at every batch and before the hires pass), the infotext keys it writes,
and that the replaced model's memory is freed."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

from modules import paths
from modules.generation import schedules
from modules.generation.params import GenerationParams
from modules.models import families
from modules.models.families import SDXL_REFINER
from modules.models.prompt_encoder import BOS, EOS
from modules.services.errors import BadRequest
from tests.support import tiny_models
from tests.support.engine import detect, make_engine

BIGG_W = tiny_models.SDXL_BIGG_WIDTH
BASE_CONTEXT = tiny_models.TEXT_WIDTH["sdxl"] + BIGG_W  # the base U-Net's context width; the refiner's is BIGG_W


@pytest.fixture(scope="module")
def tiny_refiner():
    return tiny_models.build("sdxl_refiner", seed=5)


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_refiner):
    d = tmp_path_factory.mktemp("refiner")
    tiny_models.build("sdxl", seed=3).write(d / "models" / "Stable-diffusion" / "base.safetensors")
    tiny_refiner.write(d / "models" / "Stable-diffusion" / "ref.safetensors")
    return d


@pytest.fixture(scope="module")
def engine(data):
    engine = make_engine(data, "base.safetensors")
    yield engine
    engine.queue.stop()


def job(**kw) -> GenerationParams:
    values = dict(prompt="a red circle", negative_prompt="blurry", seed=11, steps=8, width=64, height=64,
                  sampler_name="Euler a", save_images=False)
    return GenerationParams(**{**values, **kw})


@contextlib.contextmanager
def unet_calls():
    """Every U-Net call while inside: ("base" or "refiner" by its context width, the time input, the latent's
    height, the time ids)."""
    calls = []
    original = UNet2DConditionModel.forward

    def forward(self, sample, timestep, *args, **kwargs):
        which = "base" if self.config.cross_attention_dim == BASE_CONTEXT else "refiner"
        added = kwargs.get("added_cond_kwargs") or {}
        calls.append((which, float(torch.as_tensor(timestep).flatten()[0]), sample.shape[-2], added.get("time_ids")))
        return original(self, sample, timestep, *args, **kwargs)

    UNet2DConditionModel.forward = forward
    try:
        yield calls
    finally:
        UNet2DConditionModel.forward = original


def model_timestep(engine, t: float, timestep_sampler: bool) -> int:
    """The training timestep whose sigma is nearest the call's (A1111's test), from the U-Net's time input."""
    if timestep_sampler:
        return int(t)
    table = schedules.model_sigmas(engine.checkpoints.current.alphas_cumprod).double()
    sigma = schedules.t_to_sigma(torch.tensor(t), table.log().float()).double()
    return int(torch.argmin((table - sigma).abs()))


# --- the refiner as a model --------------------------------------------------------------------------

def test_detection_without_and_with_a_yaml(tmp_path, tiny_refiner):
    config = detect(tiny_refiner.write(tmp_path / "r.safetensors", yaml_beside=False))
    assert (config.family, config.yaml_path.name, config.source) == (SDXL_REFINER, "sd_xl_refiner.yaml", "detected")
    assert (config.label, config.default_size, config.scale_factor) == ("SDXL refiner", (1024, 1024), 0.13025)
    params = config.unet_params  # the published refiner's U-Net (A1111's sd_xl_refiner.yaml)
    assert (params["model_channels"], params["transformer_depth"], params["adm_in_channels"]) == (384, 4, 2560)
    assert families.detect_from_header(tmp_path / "r.safetensors", paths.CONFIGS / "v1-inference.yaml").family \
        is SDXL_REFINER
    config = detect(tiny_refiner.write(tmp_path / "beside.safetensors"))
    assert (config.family, config.source, config.unet_params["adm_in_channels"]) == (
        SDXL_REFINER, "beside", BIGG_W + 5 * 256)


@torch.no_grad()
def test_conditioning_against_transformers_and_the_aesthetic_scores(engine, tiny_refiner):
    model = engine.load_checkpoint("ref.safetensors")  # selected until the end of the test
    text = model.text
    ids = [BOS] + text.tokenize("a red circle") + [EOS]
    row = torch.tensor([ids + [0] * (77 - len(ids))])  # bigG pads with 0
    out = tiny_refiner.text_encoder(row, output_hidden_states=True)
    projection = load_file(str(model.info.filename))["conditioner.embedders.0.model.text_projection"].float()
    end = int(row[0].argmax())
    pooled = tiny_refiner.text_encoder.text_model.final_layer_norm(out.hidden_states[-1][0, end]) @ projection
    cond = text.encode_prompt("a red circle", 4).parts[0][0].at(0)
    torch.testing.assert_close(cond.context, out.hidden_states[-2][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cond.pooled, pooled, rtol=1e-5, atol=1e-5)
    # an empty negative prompt is zeros (A1111's force_zero_embeddings); the time ids carry the scores
    zero = text.encode_negative("", 4).at(0)
    assert not zero.context.any() and not zero.pooled.any()
    assert text.unet_inputs(832, 1216)["time_ids"].tolist() == [1216, 832, 0, 0, 6.0]
    assert text.unet_inputs(832, 1216, negative=True)["time_ids"].tolist() == [1216, 832, 0, 0, 2.5]
    settings = engine.options.effective({"sdxl_refiner_high_aesthetic_score": 7.5, "sdxl_crop_top": 16,
                                         "sdxl_refiner_low_aesthetic_score": 1.0})[0]
    text.use_settings(settings)
    assert text.unet_inputs(64, 64)["time_ids"].tolist() == [64, 64, 16, 0, 7.5]
    assert text.unet_inputs(64, 64, negative=True)["time_ids"].tolist() == [64, 64, 16, 0, 1.0]
    engine.load_checkpoint("base.safetensors")


# --- the switch --------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler,scheduler", [("Euler a", None), ("DPM++ 2M", "Karras"), ("Heun", None),
                                               ("DPM++ 2S a", "Exponential"), ("Euler", "Align Your Steps"),
                                               ("DDIM", None), ("UniPC", None)])
def test_switch_at_the_first_call_past_the_fraction(engine, sampler, scheduler):
    switch_at = 0.55
    with unet_calls() as calls:
        result = engine.txt2img(job(sampler_name=sampler, scheduler=scheduler, steps=10, refiner_checkpoint="ref",
                                    refiner_switch_at=switch_at))
    which = [c[0] for c in calls]
    switched = which.index("refiner")
    assert switched > 0 and which == ["base"] * switched + ["refiner"] * (len(which) - switched)
    timestep_sampler = sampler in ("DDIM", "UniPC")
    ratios = [(999 - model_timestep(engine, c[1], timestep_sampler)) / 1000 for c in calls]
    assert all(r < switch_at for r in ratios[:switched]) and ratios[switched] >= switch_at
    # the refiner's rows: the prompt's aesthetic score, then the negative prompt's (one U-Net batch)
    assert calls[switched][3][:, 4].tolist() == [6.0, 2.5]
    assert "Refiner: ref [" in result.infotexts[0] and "Refiner switch at: 0.55" in result.infotexts[0]


@pytest.mark.parametrize("sampler,base_calls,refiner_calls", [("Euler", 5, 5), ("Heun", 10, 9)])
def test_switch_by_sampling_steps(engine, sampler, base_calls, refiner_calls):
    """A1111's refiner_switch_by_sample_steps: calls / (steps, twice for second-order samplers) >= switch_at."""
    with unet_calls() as calls:
        result = engine.txt2img(job(sampler_name=sampler, steps=10, refiner_checkpoint="ref", refiner_switch_at=0.5,
                                    override_settings={"refiner_switch_by_sample_steps": True}))
    which = [c[0] for c in calls]
    assert which == ["base"] * base_calls + ["refiner"] * refiner_calls
    assert "Refiner switch by sampling steps: True" in result.infotexts[0]


def test_switching_at_once_is_the_refiner_alone_and_never_is_the_base_alone(engine):
    alone = engine.txt2img(job(override_settings={"sd_model_checkpoint": "ref.safetensors"}))
    at_once = engine.txt2img(job(refiner_checkpoint="ref.safetensors", refiner_switch_at=None))
    assert np.array_equal(np.asarray(alone.images[0]), np.asarray(at_once.images[0]))
    base = engine.txt2img(job())
    never = engine.txt2img(job(refiner_checkpoint="ref", refiner_switch_at=1.0))  # (999 - 0) / 1000 < 1
    assert np.array_equal(np.asarray(base.images[0]), np.asarray(never.images[0]))
    assert "Refiner" not in never.infotexts[0]
    middle = engine.txt2img(job(refiner_checkpoint="ref", refiner_switch_at=0.5))
    assert not np.array_equal(np.asarray(base.images[0]), np.asarray(middle.images[0]))


def test_each_batch_starts_on_the_base_and_the_replaced_model_is_freed(engine):
    first = engine.load_checkpoint("base.safetensors")
    with unet_calls() as calls:
        both = engine.txt2img(job(n_iter=2, refiner_checkpoint="ref", refiner_switch_at=0.5))
    which = [c[0] for c in calls]
    assert which == (["base"] * 4 + ["refiner"] * 4) * 2  # Euler a, 8 steps: t <= 499 from the 5th call
    assert first.released and all(p.is_meta for p in first.text.text_model.parameters())
    assert engine.checkpoints.current.info.name == "ref.safetensors"  # A1111 leaves the refiner loaded
    singles = [engine.txt2img(job(seed=seed, refiner_checkpoint="ref", refiner_switch_at=0.5)) for seed in (11, 12)]
    for image, single in zip(both.images, singles):
        assert np.array_equal(np.asarray(image), np.asarray(single.images[0]))
    plain = engine.txt2img(job())  # the next job without a refiner loads the base again
    assert "Refiner" not in plain.infotexts[0] and engine.checkpoints.current.info.name == "base.safetensors"


def test_with_two_checkpoints_kept_the_switches_read_nothing_and_give_the_same_pictures(engine):
    """sd_checkpoints_limit 2: the base waits loaded while the refiner runs and the reverse, so a job with a refiner
    reads each file once; the pictures equal those of the default (1), which releases and reads at every switch."""
    single = engine.txt2img(job(n_iter=2, refiner_checkpoint="ref", refiner_switch_at=0.5))
    engine.options.update({"sd_checkpoints_limit": 2})
    try:
        base = engine.load_checkpoint("base.safetensors")
        both = engine.txt2img(job(n_iter=2, refiner_checkpoint="ref", refiner_switch_at=0.5))
        refiner = engine.checkpoints.current
        assert refiner.info.name == "ref.safetensors" and not base.released
        again = engine.txt2img(job(n_iter=2, refiner_checkpoint="ref", refiner_switch_at=0.5))
        assert engine.checkpoints.current is refiner and not base.released  # the same two objects throughout
        assert engine.load_checkpoint("base.safetensors") is base
        for result in (both, again):
            assert [im.tobytes() for im in result.images] == [im.tobytes() for im in single.images]
            assert result.infotexts == single.infotexts
    finally:
        engine.options.update({"sd_checkpoints_limit": 1})
        engine.load_checkpoint("base.safetensors")


@pytest.mark.parametrize("mode,refined_heights,key", [("second pass", {16}, None),
                                                      ("first pass", {8}, "Hires refiner: first pass"),
                                                      ("both passes", {8, 16}, "Hires refiner: both passes")])
def test_hires_fix_refiner_pass(engine, mode, refined_heights, key):
    with unet_calls() as calls:
        result = engine.txt2img(job(enable_hr=True, hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.6,
                                    refiner_checkpoint="ref", refiner_switch_at=0.6,
                                    override_settings={"hires_fix_refiner_pass": mode}))
    by_pass = {h: [c[0] for c in calls if c[2] == h] for h in (8, 16)}
    for height, which in by_pass.items():
        assert which[0] == "base"  # each pass starts on the base
        assert ("refiner" in which) == (height in refined_heights)
    assert (key in result.infotexts[0]) if key else "Hires refiner" not in result.infotexts[0]


def test_refiner_names_are_checked_before_queueing(engine):
    with pytest.raises(BadRequest, match="refiner_checkpoint: checkpoint 'nope' not found. Available: "):
        engine.txt2img(job(refiner_checkpoint="nope"))
    with unet_calls() as calls:  # the job's own checkpoint as refiner: A1111 does not switch
        result = engine.txt2img(job(refiner_checkpoint="base", refiner_switch_at=0.5))
    assert {c[0] for c in calls} == {"base"} and "Refiner" not in result.infotexts[0]
    assert "Refiner" not in engine.txt2img(job(refiner_checkpoint="None")).infotexts[0]
