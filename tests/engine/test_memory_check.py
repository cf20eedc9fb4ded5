"""The memory check before a job samples, with a memory limit imposed (--memory-limit): a job that fits only
with the tiled VAE runs with it and says so; one that fits in no way is refused before it samples, with the
largest size that fits, which then runs; the API answers such a job with a 400."""

from __future__ import annotations

import json
import re

import pytest
import requests
import torch

from modules import devices
from modules.generation import context, memory, vae_tiling
from modules.limits import Limits
from modules.services.errors import BadRequest
from modules.settings import Settings
from tests.support.engine import make_engine
from tests.support.generation import params

CPU = torch.device("cpu")


def peaks(model: memory.ModelMemory, **kw) -> tuple[int, int]:
    """The estimate's peak for a txt2img job, untiled and tiled."""
    ctx = context.resolve(params(**kw), Settings())
    return memory.peak(ctx, model, ctx.vae_tiling).bytes, memory.peak(ctx, model, vae_tiling.VaeTiling("Always")).bytes


def test_a_job_that_fits_only_with_tiles_runs_tiled_and_one_that_does_not_fit_is_refused(data_dir):
    warm = make_engine(data_dir)  # what an engine's first job imports and allocates, held before the limit is set
    warm.txt2img(params())
    model = memory.ModelMemory.of(warm.checkpoints.current)
    warm.queue.stop()
    assert model.family == "sd1" and model.vae_width == 0.25  # the tiny VAE: 32 channels where SD's has 128
    size = dict(width=1016, height=1016, steps=1)  # below Auto's 1024x1024: untiled unless memory is short
    untiled, tiled = peaks(model, **size)
    assert untiled - tiled > 400 * memory.MIB
    # the limit leaves (untiled + tiled) / 2 beyond what the process holds now; the tiny model adds a few MB
    headroom = (untiled + tiled) // 2
    limit = devices.process_memory(CPU) + headroom
    engine = make_engine(data_dir, limits=Limits(memory_limit_gb=limit / memory.GIB))
    try:
        result = engine.txt2img(params(**size))
        assert "VAE tiling: True" in result.infotexts[0]
        assert any("VAE decodes in tiles so that the job fits in memory" in w for w in result.warnings)
        assert result.images[0].size == (1016, 1016)

        big = dict(width=2048, height=1536, steps=1)
        assert peaks(model, **big)[1] > headroom  # it fits in no way
        job = engine.submit_txt2img(params(**big))
        with pytest.raises(BadRequest, match=r"Not enough memory for this job") as refused:
            job.wait()
        text = str(refused.value)
        assert "--memory-limit allows" in text and job.state.sampling_step == 0  # refused before sampling
        w, h = map(int, re.search(r"What fits: (\d+)x(\d+) at batch size 1", text).groups())
        assert abs(w / h - 4 / 3) < 0.02 and peaks(model, width=w, height=h)[1] < headroom
        result = engine.txt2img(params(width=w, height=h, steps=1))  # what it suggested runs
        assert result.images[0].size == (w, h) and "VAE tiling: True" in result.infotexts[0]
    finally:
        engine.queue.stop()


def test_a_job_whose_prompts_alone_do_not_fit_is_refused_naming_the_prompt(data_dir):
    """The security review's case: a prompt at the length cap that alternates between 40 texts holds 40 long
    contexts (here 20 MB each, the tiny model's are 32 wide; 1.6 GB each on SDXL). They are counted before
    anything is encoded."""
    prompt = "猫" * 50_000 + " [" + "|".join(f"a{n}" for n in range(40)) + "]"
    warm = make_engine(data_dir)
    warm.txt2img(params())
    loaded = warm.checkpoints.current
    positions, longest = loaded.text.context_positions(prompt, "", 40)
    held = memory.TextMemory(positions, longest, loaded.text.width).held_bytes
    assert held > 700 * memory.MIB and longest == 2001 * 77  # 40 texts of 2001 chunks
    ctx = context.resolve(params(), Settings())
    image = memory.peak(ctx, memory.ModelMemory.of(loaded), ctx.vae_tiling).bytes
    warm.queue.stop()
    # what the process holds now, the image, and 90 % of the prompts' conditioning: the image fits while the
    # process grows by less than that (a second engine, the tokens: tens of MB), the prompts never do
    limit = devices.process_memory(CPU) + image + held * 9 // 10
    engine = make_engine(data_dir, limits=Limits(memory_limit_gb=limit / memory.GIB))
    try:
        job = engine.submit_txt2img(params(prompt=prompt, steps=40))
        with pytest.raises(BadRequest, match=r"The prompts are too long for it: their conditioning alone is "
                                             r"about 0\.7 GiB \(80041 chunks of 75 tokens; the longest prompt has "
                                             r"150075 tokens\)"):
            job.wait()
        assert job.state.sampling_step == 0
        assert engine.txt2img(params(prompt="猫" * 100)).images  # a prompt of ordinary length runs
    finally:
        engine.queue.stop()


def test_a_job_asked_at_its_own_tiling_fits_as_asked(data_dir):
    """With memory to spare nothing changes: the same image, no warning, no tiling noted."""
    engine = make_engine(data_dir)
    try:
        result = engine.txt2img(params())
        assert "VAE tiling" not in result.infotexts[0] and not result.warnings
    finally:
        engine.queue.stop()


@pytest.mark.server
def test_the_api_answers_a_job_that_does_not_fit_with_a_400(tmp_path):
    from tests.support.server import post, start_server, stop_server

    proc, url = start_server(tmp_path, "--api", "--memory-limit", "3")  # the built-in demo model (SD 1.x)
    try:
        r = post(url, "/sdapi/v1/txt2img", prompt="a red circle", width=2048, height=2048, steps=1)
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert detail.startswith("Not enough memory for this job") and "of the 3.0 GiB --memory-limit" in detail
        assert re.search(r"What fits: \d+x\d+ at batch size 1", detail)
        r = post(url, "/sdapi/v1/txt2img", prompt="a red circle", width=128, height=128, steps=2, seed=5)
        assert r.status_code == 200 and json.loads(r.json()["info"])["seed"] == 5
        assert requests.get(url + "/sdapi/v1/progress", timeout=30).status_code == 200  # still serving
    finally:
        stop_server(proc)


@pytest.mark.server
def test_the_api_answers_a_model_that_does_not_fit_with_a_507_and_keeps_serving(tmp_path):
    """A checkpoint whose weights do not fit what is free (a --memory-limit below what the server holds) is refused
    before it is read, at start-up and for each job, and the API says so with a 507, as for running out of memory."""
    from tests.support.server import post, start_server, stop_server

    proc, url = start_server(tmp_path, "--api", "--memory-limit", "0.5")  # less than the server holds: none free
    try:
        r = post(url, "/sdapi/v1/txt2img", prompt="a red circle", width=64, height=64, steps=1)
        assert r.status_code == 507, r.text
        detail = r.json()["detail"]
        assert "does not fit in memory: its weights take" in detail and "free under --memory-limit" in detail
        assert requests.get(url + "/sdapi/v1/progress", timeout=30).status_code == 200  # still serving
    finally:
        stop_server(proc)
    assert "does not fit in memory" in (tmp_path / "server.log").read_text()  # the start-up load said it too
