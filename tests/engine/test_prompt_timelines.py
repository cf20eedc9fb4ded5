"""Prompt editing's timelines as A1111 v1.10 counts them in a job (the rules themselves: tests/unit/test_prompt_syntax):
a second-order sampler's steps count twice, a hires pass counts on from the first pass, and use_old_scheduling
gives the old timelines with its infotext key. Each check compares two jobs that must make the same picture by those
rules, and one that must not."""

from __future__ import annotations

import pytest

from tests.support.generation import engine, params, pasted_setting  # noqa: F401  (fixture)


def pixels(result) -> list[bytes]:
    return [im.tobytes() for im in result.images]


def test_a_second_order_sampler_counts_its_steps_twice(engine):  # noqa: F811
    # Heun, 4 steps: A1111's timeline has 8 (SamplerData.total_steps), so 0.5 is step 4, not step 2
    job = dict(sampler_name="Heun", steps=4, seed=5)
    half = engine.txt2img(params(prompt="a [red circle:blue square:0.5]", **job))
    assert pixels(half) == pixels(engine.txt2img(params(prompt="a [red circle:blue square:4]", **job)))
    assert pixels(half) != pixels(engine.txt2img(params(prompt="a [red circle:blue square:2]", **job)))
    assert "Old prompt editing timelines" not in half.infotexts[0]


def test_the_hires_pass_counts_on_from_the_first_pass(engine):  # noqa: F811
    job = dict(sampler_name="Euler", steps=4, seed=9, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=4,
               denoising_strength=0.6, hr_upscaler="Latent")
    # an edit at half the first pass is over before the hires pass: that pass shows "blue square" throughout
    edited = engine.txt2img(params(prompt="a [red circle:blue square:0.5]", **job))
    assert pixels(edited) == pixels(engine.txt2img(params(prompt="a [red circle:blue square:0.5]",
                                                          hr_prompt="a blue square", **job)))
    # 1.5 is halfway through the hires pass, as is step 6 after the first pass's 4 (the first pass: red circle)
    late = engine.txt2img(params(prompt="a [red circle:blue square:1.5]", **job))
    assert pixels(late) == pixels(engine.txt2img(params(prompt="a [red circle:blue square:1.5]",
                                                        hr_prompt="a [red circle:blue square:6]", **job)))
    assert pixels(late) != pixels(engine.txt2img(params(prompt="a [red circle:blue square:1.5]",
                                                        hr_prompt="a red circle", **job)))


def test_old_timelines_count_in_the_first_pass_and_say_so(engine):  # noqa: F811
    job = dict(sampler_name="Euler", steps=4, seed=9, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=4,
               denoising_strength=0.6, hr_upscaler="Latent", override_settings={"use_old_scheduling": True})
    # old: 0.5 is step 2 of the first pass's 4, in the hires pass too (whose prompt then switches after its
    # step 2); new: the hires pass shows "blue square" throughout
    old = engine.txt2img(params(prompt="a [red circle:blue square:0.5]", **job))
    assert "Old prompt editing timelines: True" in old.infotexts[0]
    new = engine.txt2img(params(prompt="a [red circle:blue square:0.5]",
                                **{**job, "override_settings": {"use_old_scheduling": False}}))
    assert "Old prompt editing timelines" not in new.infotexts[0]
    assert pixels(old) != pixels(new)
    # where the old and new schedules agree (no edit in the hires pass's prompt), the key is left out
    same = engine.txt2img(params(prompt="a red circle", **job))
    assert "Old prompt editing timelines" not in same.infotexts[0]


@pytest.mark.parametrize("version, old", [("v1.5.2", True), ("v1.6.0", False), ("webui-0.1.0", False)])
def test_infotexts_before_a1111_1_6_with_prompt_editing_paste_the_old_timelines(engine, version, old):  # noqa: F811
    text = f"a [red:blue:0.5] cat\nSteps: 4, Sampler: Euler, Seed: 1, Size: 64x64, Version: {version}"
    assert pasted_setting(engine, text, "use_old_scheduling") == (old, old)  # the page's, the API's override
    plain = text.replace("[red:blue:0.5]", "red")  # without editing A1111 sets nothing
    assert "use_old_scheduling" not in engine.paste.read(plain, txt2img=True).settings


def test_a_prompt_is_checked_over_its_timeline_before_the_job_is_queued(engine):  # noqa: F811
    # Heun at 2 steps counts 4: the text after step 3 is used, so its weight that no float32 holds is refused
    from modules.engine import BadRequest

    prompt = f"a [red circle:(blue square:{'9' * 40}):3]"
    with pytest.raises(BadRequest, match="prompt"):
        engine.submit_txt2img(params(prompt=prompt, sampler_name="Heun", steps=2))
    engine.txt2img(params(prompt=prompt, sampler_name="Euler", steps=2, save_images=False))  # 2 steps: never used
