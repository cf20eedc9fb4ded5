"""Loopback (img2img script) through the engine with the tiny model: each loop is img2img of the image the loop
before made, with A1111's seeds and denoising strengths (scripts/loopback.py in A1111 v1.10: the seed goes up by
one with every loop run, across batches; the strength follows `calculate_denoising_strength`; later loops of an
inpainting request use masked content "original"). Checked against the same loops run as plain img2img requests."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from PIL import Image

from modules.generation.params import Img2ImgParams
from modules.services.errors import BadRequest, UnknownScript
from modules.services.scripts import loopback
from tests.support.generation import engine, params  # noqa: F401  (fixture)
from tests.support.img2img import left_half_mask

SEED = 40


def request(**kw) -> Img2ImgParams:
    init = Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    base = {**params(steps=3, width=64, height=64, seed=SEED).model_dump(), "init_images": [init],
            "denoising_strength": 0.3, "save_images": False}
    return Img2ImgParams(**{**base, **kw})


def by_hand(engine, req, loops, final, curve, seed):  # noqa: F811
    """A1111's loops as plain img2img requests: loop i from loop i-1's image, at seed + i."""
    image, made = req.init_images[0], []
    for i in range(loops):
        fill = req.inpainting_fill if i == 0 else 1
        step = req.model_copy(update=dict(init_images=[image], seed=seed + i, inpainting_fill=fill, n_iter=1,
                                          batch_size=1, denoising_strength=loopback.strength(
                                              i, loops, req.denoising_strength, final, curve)))
        image = engine.img2img(step).images[0]
        made.append(image)
    return made


def test_the_curves_are_a1111s():
    assert loopback.strength(0, 4, 0.3, 0.9, "Linear") == 0.3
    assert loopback.strength(3, 4, 0.3, 0.9, "Linear") == pytest.approx(0.9)
    assert loopback.strength(1, 3, 0.2, 1.0, "Aggressive") == pytest.approx(0.2 + 0.8 * math.sin(math.pi / 4))
    assert loopback.strength(1, 3, 0.2, 1.0, "Lazy") == pytest.approx(0.2 + 0.8 * (1 - math.cos(math.pi / 4)))
    assert loopback.strength(0, 1, 0.4, 0.9, "Lazy") == 0.4  # one loop: the request's strength


def test_each_loop_repaints_the_image_the_loop_before_made(engine):  # noqa: F811
    req = request()
    result = engine.submit_script("img2img", "Loopback", req, [3, 0.8, "Aggressive", "None"]).wait()
    expected = by_hand(engine, req, 3, 0.8, "Aggressive", SEED)
    assert [im.tobytes() for im in result.images] == [im.tobytes() for im in expected]
    assert result.seeds == [SEED, SEED + 1, SEED + 2]
    for i, text in enumerate(result.infotexts):
        assert f"Seed: {SEED + i}," in text
        assert "Final denoising strength: 0.8, Denoising curve: Aggressive" in text
        strength = loopback.strength(i, 3, 0.3, 0.8, "Aggressive")
        assert f"Denoising strength: {strength}, " in text  # as A1111 writes a float: 0.6535533905932738
    # a row grid of the loops leads (return_grid), with the first loop's infotext
    assert result.grid is not None and result.grid.size == (192, 64)
    assert result.grid.info["parameters"] == result.infotexts[0]


def test_later_loops_of_an_inpainting_request_keep_the_previous_image_under_the_mask(engine):  # noqa: F811
    req = request(mask=left_half_mask(), mask_blur=0, inpainting_fill=0)  # "fill" for the first loop only
    result = engine.submit_script("img2img", "Loopback", req, [2, 0.5, "Linear"]).wait()
    expected = by_hand(engine, req, 2, 0.5, "Linear", SEED)
    assert [im.tobytes() for im in result.images] == [im.tobytes() for im in expected]


def test_batch_count_starts_each_batch_from_the_init_image_and_keeps_its_last(engine):  # noqa: F811
    req = request(n_iter=2, batch_size=3)  # batch size is 1 for Loopback, as in A1111
    result = engine.submit_script("img2img", "Loopback", req, [2, 0.6, "Lazy", "None"]).wait()
    assert result.seeds == [SEED + 1, SEED + 3]
    first = by_hand(engine, request(), 2, 0.6, "Lazy", SEED)
    second = by_hand(engine, request(), 2, 0.6, "Lazy", SEED + 2)
    assert [im.tobytes() for im in result.images] == [first[-1].tobytes(), second[-1].tobytes()]


def test_a_skipped_loop_ends_its_batch_and_the_seeds_go_on(engine):  # noqa: F811
    """A1111: `p.seed = processed.seed + 1` comes before `if state.skipped: break`, and a batch whose loop was
    skipped gives no last image. The skip is asked for while a gate job holds the queue, so the first loop takes
    it at its first step, whatever the timing."""
    gate = threading.Event()
    engine.queue.submit("test", lambda _job: gate.wait(30))
    job = engine.submit_script("img2img", "Loopback", request(n_iter=2), [2, 0.5, "Linear", "None"])
    job.request("skip")
    gate.set()
    result = job.wait(120)
    assert not result.interrupted and result.seeds == [SEED + 2]  # batch 2's loops ran at seeds 41 and 42
    second = by_hand(engine, request(), 2, 0.5, "Linear", SEED + 1)
    assert result.images[0].tobytes() == second[-1].tobytes()


@pytest.mark.parametrize("args, needle", [
    ([0], "loops 0 must be a whole number from 1 to 32"),
    ([33], "from 1 to 32"),
    ([2.5], "whole number"),
    (["many"], "loops 'many' is not a number"),
    ([2, 1.5], "final_denoising_strength 1.5 must be a number from 0 to 1"),
    ([2, 0.5, "Steep"], "denoising_curve 'Steep' is not one of Aggressive, Linear, Lazy"),
    ([2, 0.5, "Linear", "CLIP"], "interrogating images"),
    ([2, 0.5, "Linear", "None", 9], "at most 4 arguments"),
])
def test_bad_arguments_are_refused_before_anything_runs(engine, args, needle):  # noqa: F811
    with pytest.raises(BadRequest, match=needle):
        engine.submit_script("img2img", "Loopback", request(), args)


def test_loopback_is_an_img2img_script(engine):  # noqa: F811
    assert "loopback" in engine.scripts.names("img2img") and "loopback" not in engine.scripts.names("txt2img")
    with pytest.raises(UnknownScript, match="unknown script 'Loopback' for txt2img; scripts: prompt matrix"):
        engine.submit_script("txt2img", "Loopback", params(), [2])
