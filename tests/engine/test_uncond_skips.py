"""A1111's optimizations of the CFG denoiser (sd_samplers_cfg_denoiser.py, v1.10): those that leave the negative
prompt out of some U-Net calls, skip_early_cond ("Skip Early CFG") and Negative Guidance minimum sigma (NGMS,
s_min_uncond, s_min_uncond_all), as it decides per call; and pad_cond_uncond / pad_cond_uncond_v0, which make a
prompt and a negative prompt of different lengths one U-Net batch."""

from __future__ import annotations

import torch

from modules.generation import pipeline, rng, samplers
from modules.generation.context import UncondSkips
from tests.support.generation import engine, params  # noqa: F401  (fixture)


def test_which_calls_skip():
    early = UncondSkips(early=0.25)
    assert [early.fields(i, 8, 5.0) is not None for i in range(8)] == [True, True, True] + [False] * 5  # i/8 <= 0.25
    ngms = UncondSkips(ngms=2.0)
    # every other call (the odd ones, A1111's `self.step % 2`) whose noise level is below it
    assert [ngms.fields(i, 8, level) is not None for i, level in enumerate([9, 5, 3, 1.9, 1.5, 1.0, 0.5, 0.1])] == \
        [False, False, False, True, False, True, False, True]
    assert ngms.fields(3, 8, 1.0) == {"NGMS": 2.0}
    every = UncondSkips(ngms=2.0, ngms_all=True)
    assert every.fields(4, 8, 1.0) == {"NGMS": 2.0, "NGMS all steps": True}
    assert UncondSkips().fields(0, 8, 0.0) is None
    assert UncondSkips(early=0.1, ngms=2.0, ngms_all=True).fields(0, 8, 1.0) == {"Skip Early CFG": 0.1}


class Counting(pipeline.Denoiser):
    """The denoiser, noting the batch size of every U-Net run."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.rows = []

    def _unet(self, x, *args, **kw):
        self.rows.append(x.shape[0])
        return super()._unet(x, *args, **kw)


def test_skipped_calls_run_the_prompt_alone(engine):  # noqa: F811
    model = engine.load_checkpoint()
    cond, uncond = model.text.encode("a red circle")[None], model.text.encode("green")[None]
    shape = (4, 8, 8)
    with torch.no_grad():
        gens = rng.create_generators([3], "CPU", torch.device("cpu"))
        noise = rng.initial_noise(gens, shape, torch.device("cpu"))
        denoiser = Counting(model, cond, uncond, 7.0)
        denoiser.skips = UncondSkips(ngms=1.0)
        pipeline.sample(model, denoiser, noise, samplers.resolve("Euler"), 10, gens, pipeline.Hooks())
    sigmas = samplers.prepare(samplers.resolve("Euler"), 10, model.alphas_cumprod).sigmas[:-1]
    skipped = [i % 2 == 1 and float(s) < 1.0 for i, s in enumerate(sigmas)]
    assert any(skipped) and not all(skipped)
    assert denoiser.rows == [1 if skip else 2 for skip in skipped]  # prompt alone, or prompt and negative together
    assert denoiser.fields == {"NGMS": 1.0}


def test_skipping_every_call_is_guidance_at_scale_one(engine):  # noqa: F811
    """With every call skipped the picture is the prompt's prediction alone: CFG scale 1."""
    kw = dict(steps=4, sampler_name="Euler")
    cfg_one = engine.txt2img(params(**kw, cfg_scale=1))
    ngms = engine.txt2img(params(**kw, s_min_uncond=15, override_settings={"s_min_uncond_all": True}))
    assert ngms.images[0].tobytes() == cfg_one.images[0].tobytes()
    assert "NGMS: 15, NGMS all steps: True" in ngms.infotexts[0]
    early = engine.txt2img(params(**kw, override_settings={"skip_early_cond": 1.0}))
    assert early.images[0].tobytes() == cfg_one.images[0].tobytes()
    assert "Skip Early CFG: 1," in early.infotexts[0]
    plain = engine.txt2img(params(**kw))
    assert plain.images[0].tobytes() != cfg_one.images[0].tobytes() and "NGMS" not in plain.infotexts[0]


def test_ddim_compares_ngms_with_the_timestep_as_a1111_does(engine):  # noqa: F811
    """DDIM's denoiser is given the U-Net timestep as its sigma (1 + k * 1000 // steps, never below 101 in the
    calls of 10 steps): an NGMS of 15 never skips there, and nothing is written."""
    kw = dict(steps=10, sampler_name="DDIM")
    plain = engine.txt2img(params(**kw))
    ngms = engine.txt2img(params(**kw, s_min_uncond=15))
    assert ngms.images[0].tobytes() == plain.images[0].tobytes() and "NGMS" not in ngms.infotexts[0]
    model = engine.load_checkpoint()  # 500 does skip: the odd calls at timesteps below it (401, 201)
    cond, uncond = model.text.encode("a red circle")[None], model.text.encode("green")[None]
    with torch.no_grad():
        gens = rng.create_generators([3], "CPU", torch.device("cpu"))
        denoiser = Counting(model, cond, uncond, 7.0)
        denoiser.skips = UncondSkips(ngms=500.0)
        pipeline.sample(model, denoiser, rng.initial_noise(gens, (4, 8, 8), torch.device("cpu")),
                        samplers.resolve("DDIM"), 10, gens, pipeline.Hooks())
    # the calls go from timestep 901 down to 101: 901, 801, ..., 101; the odd ones below 500 are 401 and 201
    assert denoiser.rows == [2, 2, 2, 2, 2, 1, 2, 1, 2] and denoiser.fields == {"NGMS": 500.0}


def test_the_infotext_keys_paste_as_the_settings(engine):  # noqa: F811
    pasted = engine.paste.read("a cat\nSteps: 4, Seed: 1, NGMS: 2.5, NGMS all steps: True, Skip Early CFG: 0.2",
                               txt2img=True)
    assert pasted.settings["s_min_uncond"] == 2.5 and pasted.settings["s_min_uncond_all"] is True
    assert pasted.settings["skip_early_cond"] == 0.2


# --- pad_cond_uncond: A1111's pad_cond (the empty prompt's chunk repeated onto the shorter) and pad_cond_uncond_v0
# (the shorter's last vector repeated), then one batch

def one_call(model, cond, uncond, pad="", empty=None):
    denoiser = Counting(model, cond, uncond, 7.0, empty=empty)
    denoiser.pad = pad
    x = rng.initial_noise(rng.create_generators([5], "CPU", torch.device("cpu")), (4, 8, 8), torch.device("cpu"))
    with torch.no_grad():
        return denoiser(x, torch.tensor([500.0])), denoiser


def test_padding_makes_one_batch_of_what_would_be_two(engine):  # noqa: F811
    model = engine.load_checkpoint()
    long, short = model.text.encode("a red circle, " * 20)[None], model.text.encode("green")[None]
    empty = model.text.encode("")
    assert long.shape[1] == 2 * short.shape[1] == 2 * empty.shape[0]
    out, plain = one_call(model, long, short)
    assert plain.rows == [1, 1] and plain.fields == {}  # A1111's default: two batches
    out, padded = one_call(model, long, short, "pad", empty)
    assert padded.rows == [2] and padded.fields == {"Pad conds": True}
    by_hand, _ = one_call(model, long, torch.cat([short, empty[None]], dim=1))  # the negative, padded here
    assert torch.equal(out, by_hand)
    out, v0 = one_call(model, long, short, "v0")
    assert v0.rows == [2] and v0.fields == {"Pad conds v0": True}
    by_hand, _ = one_call(model, long, torch.cat([short, short[:, -1:].repeat(1, 77, 1)], dim=1))
    assert torch.equal(out, by_hand)
    # the prompt shorter than the negative: the prompt is padded
    out, _ = one_call(model, short, long, "pad", empty)
    by_hand, _ = one_call(model, torch.cat([short, empty[None]], dim=1), long)
    assert torch.equal(out, by_hand)
    # padding comes first, as in A1111: a call that leaves the negative prompt out runs the padded prompt
    skipping = Counting(model, short, long, 7.0, empty=empty)
    skipping.pad, skipping.skips = "pad", UncondSkips(ngms=1000.0, ngms_all=True)
    lengths = []
    real = skipping._unet
    skipping._unet = lambda x, t, context, *a, **kw: lengths.append(context.shape[1]) or real(x, t, context, *a, **kw)
    x = rng.initial_noise(rng.create_generators([5], "CPU", torch.device("cpu")), (4, 8, 8), torch.device("cpu"))
    with torch.no_grad():
        skipping(x, torch.tensor([500.0]), level=1.0)
    assert skipping.rows == [1] and lengths == [154] and skipping.fields["Pad conds"] is True


def test_the_settings_pad_a_job_and_say_so(engine):  # noqa: F811
    kw = dict(prompt="a red circle, " * 40, negative_prompt="green", steps=3, save_images=False)
    plain = engine.txt2img(params(**kw))
    padded = engine.txt2img(params(**kw, override_settings={"pad_cond_uncond": True}))
    v0 = engine.txt2img(params(**kw, override_settings={"pad_cond_uncond_v0": True, "pad_cond_uncond": True}))
    assert "Pad conds" not in plain.infotexts[0]
    assert "Pad conds: True" in padded.infotexts[0] and "Pad conds v0: True" in v0.infotexts[0]
    assert "Pad conds: True" not in v0.infotexts[0]  # v0 wins, as A1111 checks it first
    assert plain.images[0].tobytes() != padded.images[0].tobytes()
    same = engine.txt2img(params(**{**kw, "prompt": "a red circle"}, override_settings={"pad_cond_uncond": True}))
    assert "Pad conds" not in same.infotexts[0]  # of one length: nothing to pad
