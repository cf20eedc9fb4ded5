"""Several checkpoints loaded at once (A1111's `sd_checkpoints_limit`, Settings > Stable Diffusion): the models used
last stay loaded beside the current one, a switch back to one reads nothing and gives the same pictures, the least
recently used go first when the limit or memory says so, and a LoRA merged into a kept model is taken out as
exactly as in the model in use."""

from __future__ import annotations

import dataclasses
import logging
import shutil

import pytest
import torch

from modules import devices
from modules.generation import context, memory, pipeline, vae_tiling
from modules.generation.params import GenerationParams
from modules.models import checkpoint_file
from modules.models.checkpoint_file import CheckpointError
from modules.models.family import TEXT_ENCODER_PREFIXES
from modules.services.errors import BadRequest
from modules.settings import Settings
from tests.engine.test_extra_networks import kohya_lora, same_weights, snapshot, write_lora
from tests.support.engine import make_engine


def generate(model, seed=1) -> bytes:
    params = GenerationParams(prompt="a red circle", width=64, height=64, steps=3, sampler_name="Euler", seed=seed)
    return next(iter(pipeline.txt2img(model, context.resolve(params)))).images[0].tobytes()


def test_models_used_last_stay_loaded_up_to_the_limit(manager):
    find = manager.checkpoints.find
    sd1, sd2, ckpt = find("sd1.safetensors"), find("sd2-v.safetensors"), find("sd1-ckpt.ckpt")
    first = manager.get(sd1, limit=2)
    image = generate(first)
    second = manager.get(sd2, limit=2)
    assert manager.current is second and manager.kept == [first] and not first.released
    assert manager.config_of(sd1) is first.config  # known from the kept model, not read from the header
    again = manager.get(sd1, limit=2)
    assert again is first and manager.kept == [second] and not second.released
    assert generate(again) == image
    third = manager.get(ckpt, limit=2)  # a third one: the least recently used (sd2) goes
    assert second.released and manager.kept == [first] and manager.current is third
    assert manager.get(sd1, limit=3) is first and manager.kept == [third]
    fresh = manager.get(sd2, limit=3)
    assert fresh is not second and manager.kept == [third, first]  # least recently used first
    assert manager.get(ckpt, limit=3) is third and manager.kept == [first, fresh]
    assert manager.get(ckpt, limit=1) is third  # a lower limit: the others go at once
    assert manager.kept == [] and first.released and fresh.released
    fourth = manager.get(sd1)  # the default, 1: the model in use is released as before
    assert third.released and manager.kept == [] and manager.current is fourth
    manager.get(sd2, limit=2)
    manager.unload()  # everything
    assert manager.current is None and manager.kept == [] and fourth.released


def test_low_memory_models_are_never_kept_nor_kept_beside(manager):
    """Low-memory mode is for saving memory: a model in it is not kept, and loading one keeps nothing beside it."""
    sd1, sd2 = manager.checkpoints.find("sd1.safetensors"), manager.checkpoints.find("sd2-v.safetensors")
    plain = manager.get(sd1, limit=2)
    other = manager.get(sd2, limit=2)
    low = manager.get(sd1, low_memory_mode="On", limit=2)  # the kept one is in the other mode: loaded again
    assert low is not plain and plain.released and low.low_memory
    assert other.released and manager.kept == []
    manager.get(sd2, limit=2)
    assert low.released and manager.kept == []


def test_a_file_that_fails_costs_no_kept_model_and_a_jobs_reserve_is_kept_free(data_dir, manager):
    """The limit trims the kept models once the new one is read, so a broken file leaves them. A load that must
    leave room for a running job (`reserve`: a refiner's switch) keeps the model in use only if it fits beside."""
    folder = data_dir / "models" / "Stable-diffusion"
    (folder / "broken.safetensors").write_bytes((folder / "sd1.safetensors").read_bytes()[:1000])
    shutil.copy(folder / "sd1.yaml", folder / "broken.yaml")
    manager.checkpoints.refresh()
    find = manager.checkpoints.find
    a = manager.get(find("sd1.safetensors"), limit=2)
    b = manager.get(find("sd2-v.safetensors"), limit=2)
    with pytest.raises(CheckpointError):
        manager.get(find("broken.safetensors"), limit=2)
    assert manager.kept == [a] and manager.current is b and not a.released
    c = manager.get(find("sd1-ckpt.ckpt"), limit=3, reserve=1 << 50)  # no machine has a PiB free
    assert manager.current is c and b.released and a.released and manager.kept == []


def test_a_short_memory_releases_the_kept_models_first(data_dir, manager, caplog):
    """--memory-limit over what the process holds now: with room for the new model and READ_MARGIN the kept ones
    stay; with room for the new weights alone, the least recently used kept model is released first, then the
    others, then the model in use, each said in the log."""
    folder = data_dir / "models" / "Stable-diffusion"
    shutil.copy(folder / "sd1.safetensors", folder / "copy.safetensors")
    shutil.copy(folder / "sd1.yaml", folder / "copy.yaml")
    manager.checkpoints.refresh()
    find = manager.checkpoints.find
    try:
        a = manager.get(find("sd1.safetensors"), limit=4)
        b = manager.get(find("sd2-v.safetensors"), limit=4)
        c = manager.get(find("sd1-ckpt.ckpt"), limit=4)
        need = checkpoint_file.read_size(folder / "copy.safetensors", torch.float32, TEXT_ENCODER_PREFIXES)[1]
        manager.memory_limit = devices.process_memory(torch.device("cpu")) + need + (3 << 30)
        d = manager.get(find("copy.safetensors"), limit=4)
        assert manager.kept == [a, b, c] and manager.current is d
        manager.memory_limit = devices.process_memory(torch.device("cpu")) + (600 << 20)  # < READ_MARGIN to spare
        with caplog.at_level(logging.INFO, logger="modules.models.manager"):
            e = manager.get(find("sd1-fp16.safetensors"), limit=5)
        releases = [r for r in caplog.records if "before reading it" in r.getMessage()]
        assert [r.getMessage().rsplit("releasing ", 1)[1] for r in releases] == [
            f"{m.info.name} before reading it" for m in (a, b, c, d)]
        assert [r.levelname for r in releases] == ["INFO"] * 3 + ["WARNING"]  # only the model in use is news
        assert all(m.released for m in (a, b, c, d)) and manager.kept == [] and manager.current is e
    finally:
        manager.memory_limit = None
        manager.checkpoints.hasher.stop()


@pytest.fixture()
def engine(data_dir):
    engine = make_engine(data_dir, "sd1.safetensors")
    yield engine
    engine.queue.stop()


def job(**kw) -> GenerationParams:
    return GenerationParams(**{**dict(prompt="a red circle", width=64, height=64, steps=3, sampler_name="Euler",
                                      seed=5, save_images=False), **kw})


def test_switching_back_to_a_kept_checkpoint_with_a_lora_restores_it_exactly(engine):
    """A LoRA merged into the model that is set aside stays merged while it waits, and the next job without it
    takes it out bit for bit, as in the model in use (WeightPatcher's backups survive the switch)."""
    engine.options.update({"sd_checkpoints_limit": 2})
    sd1 = engine.load_checkpoint("sd1.safetensors")
    before = snapshot(sd1)
    plain = engine.txt2img(job()).images[0].tobytes()
    write_lora(engine, "style", kohya_lora(sd1, seed=2))
    with_lora = engine.txt2img(job(prompt="a red circle <lora:style:0.9>")).images[0].tobytes()
    assert with_lora != plain
    other = engine.txt2img(job(override_settings={"sd_model_checkpoint": "sd2-v.safetensors"}))
    assert other.images and engine.checkpoints.current.info.name == "sd2-v.safetensors" and not sd1.released
    assert engine.txt2img(job(prompt="a red circle <lora:style:0.9>")).images[0].tobytes() == with_lora
    assert engine.checkpoints.current is sd1  # the same object: nothing was read
    assert engine.txt2img(job()).images[0].tobytes() == plain and same_weights(sd1, before)


def with_memory_limit(engine, room: int) -> None:
    """--memory-limit `room` bytes over what the process holds now, for the check before a job (set after the
    models are loaded, so what loading allocated does not count against it)."""
    limit = devices.process_memory(torch.device("cpu")) + room
    engine.requests.limits = dataclasses.replace(engine.requests.limits, memory_limit_gb=limit / memory.GIB)


def kept_sd2(engine):
    """sd1 in use and sd2-v kept beside it (sd_checkpoints_limit 3)."""
    engine.options.update({"sd_checkpoints_limit": 3})
    engine.txt2img(job(override_settings={"sd_model_checkpoint": "sd2-v.safetensors"}))
    engine.txt2img(job())
    kept = engine.checkpoints.kept_models()
    assert [m.info.name for m in kept] == ["sd2-v.safetensors"] and not kept[0].released
    return kept[0]


def test_a_job_that_does_not_fit_releases_the_kept_models_before_it_is_refused(data_dir):
    """The checkpoints kept are a cache: a job short of memory gives them up first, then fits or, as here (256 MiB
    left, a job whose estimate is larger), is refused as before."""
    engine = make_engine(data_dir, "sd1.safetensors")
    big = dict(width=2048, height=2048, batch_size=8)
    try:
        kept = kept_sd2(engine)
        model = memory.ModelMemory.of(engine.checkpoints.current)
        ctx = context.resolve(job(**big), Settings())
        assert memory.peak(ctx, model, vae_tiling.VaeTiling("Always")).bytes > 256 * memory.MIB
        with_memory_limit(engine, 256 * memory.MIB)
        with pytest.raises(BadRequest, match="Not enough memory for this job"):
            engine.txt2img(job(**big))
        assert kept.released and engine.checkpoints.kept_models() == []
        assert engine.checkpoints.current.info.name == "sd1.safetensors"
    finally:
        engine.queue.stop()


def test_a_job_that_fits_only_with_tiles_releases_the_kept_models_first(data_dir):
    """Tiles (or swap space) would make the job fit beside the kept models: they are released first, and the job
    is fitted again (here the tiny models' memory does not change the outcome, so it still runs tiled). The room
    is between the job's tiled and untiled estimates, which are over 400 MB apart."""
    engine = make_engine(data_dir, "sd1.safetensors")
    size = dict(width=1016, height=1016, steps=1)
    try:
        kept = kept_sd2(engine)
        model = memory.ModelMemory.of(engine.checkpoints.current)
        ctx = context.resolve(job(**size), Settings())
        untiled = memory.peak(ctx, model, ctx.vae_tiling).bytes
        tiled = memory.peak(ctx, model, vae_tiling.VaeTiling("Always")).bytes
        assert untiled - tiled > 400 * memory.MIB
        with_memory_limit(engine, (untiled + tiled) // 2)
        result = engine.txt2img(job(**size))
        assert kept.released and engine.checkpoints.kept_models() == []
        assert "VAE tiling: True" in result.infotexts[0]
    finally:
        engine.queue.stop()
