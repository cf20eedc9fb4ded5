"""A checkpoint's SHA-256 off the load's path: computed by one background thread after the load, cached in
cache.json, waited for only by what needs it (the infotext's `Model hash`, finding a checkpoint by hash), and
stopped with the engine's queue."""

from __future__ import annotations

import hashlib
import json
import threading
import time

from modules.hashing import BackgroundHasher, HashCache, HashTask, sha256_of_file
from tests.support.engine import make_engine
from tests.support.generation import params


class GatedHash:
    """A hash function that does not finish until `release()` (and counts its calls): a file that takes as long
    to hash as the test wants. It reports progress while it waits, so a stopping hasher can end it."""

    def __init__(self):
        self.gate = threading.Event()
        self.calls: list[str] = []

    def __call__(self, path, on_read=None):
        self.calls.append(path.name)
        while not self.gate.wait(0.01):
            if on_read is not None:
                on_read(0)
        return sha256_of_file(path, on_read)

    def release(self) -> None:
        self.gate.set()


def gated_engine(data_dir, checkpoint: str | None = "sd1.safetensors"):
    engine = make_engine(data_dir, checkpoint)
    gated = GatedHash()
    hasher(engine).compute = gated
    return engine, gated


def hasher(engine) -> BackgroundHasher:
    return engine.checkpoints._models.checkpoints.hasher


def file_sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hasher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hasher" and t.is_alive()]


def wait_until(condition, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_load_returns_before_the_hash_and_the_first_infotext_waits_for_it(data_dir):
    engine, gated = gated_engine(data_dir)
    try:
        model = engine.load_checkpoint("sd1.safetensors")
        info = model.info
        sha = file_sha256(info.filename)
        # loaded while the hash is still being computed: the title has no [hash] yet, everywhere
        task = engine.checkpoints.hash_later(info)
        wait_until(lambda: gated.calls == ["sd1.safetensors"])  # (the hasher thread has started, maybe not run)
        assert not task.done and info.sha256 is None
        assert info.title == "sd1.safetensors"
        assert [i.title for i in engine.checkpoints.list() if i.filename == info.filename] == ["sd1.safetensors"]
        assert engine.options.values.sd_model_checkpoint == "sd1.safetensors"
        # the job samples, then waits for the hash before it writes the infotext (and says so)
        job = engine.submit_txt2img(params(save_images=True))
        wait_until(lambda: job.state.textinfo == "Calculating the hash of sd1.safetensors")
        assert not job.done.is_set()
        gated.release()
        result = job.wait(120)
        assert f"Model hash: {sha[:10]}, Model: sd1," in result.infotexts[0]
        assert result.info["sd_model_hash"] == sha[:10] and job.state.textinfo is None
        # the title gains its hash in the list (the page's dropdown, /sdapi/v1/sd-models) and in the setting
        assert info.title == f"sd1.safetensors [{sha[:10]}]"
        listed = [i for i in engine.checkpoints.list() if i.filename == info.filename]
        assert [i.title for i in listed] == [info.title]
        assert engine.options.values.sd_model_checkpoint == info.title
        assert engine.checkpoints.resolve().filename == info.filename
        # cached in cache.json
        cached = json.loads(engine.paths.hash_cache.read_text())["hashes"][str(info.filename)]
        assert cached["sha256"] == sha
    finally:
        gated.release()
        engine.queue.stop()


def test_a_job_that_samples_longer_than_the_hash_does_not_wait(data_dir):
    engine, gated = gated_engine(data_dir)
    try:
        info = engine.load_checkpoint("sd1.safetensors").info
        gated.release()  # the hash is done before the first batch is
        engine.checkpoints.hash_later(info).wait(60)
        result = engine.txt2img(params(save_images=False))
        assert f"Model hash: {file_sha256(info.filename)[:10]}," in result.infotexts[0]
    finally:
        engine.queue.stop()


def test_a_second_load_uses_the_cache(data_dir):
    engine, gated = gated_engine(data_dir)
    gated.release()
    try:
        info = engine.load_checkpoint("sd1.safetensors").info
        engine.checkpoints.hash_later(info).wait(60)
        assert gated.calls == ["sd1.safetensors"]
        engine.checkpoints.unload()
        engine.load_checkpoint("sd1.safetensors")
        assert gated.calls == ["sd1.safetensors"]  # not hashed again
    finally:
        engine.queue.stop()
    # a new engine (a restart) knows the hash from cache.json before anything is loaded
    again, gated_again = gated_engine(data_dir)
    try:
        listed = again.checkpoints.find("sd1.safetensors")
        assert listed.sha256 == file_sha256(listed.filename)
        model = again.load_checkpoint("sd1.safetensors")
        assert model.info.title == f"sd1.safetensors [{listed.sha256[:10]}]" and gated_again.calls == []
        assert not hasher(again).running
    finally:
        again.queue.stop()


def test_the_hasher_stops_with_the_queue(data_dir):
    engine, gated = gated_engine(data_dir)
    before = len(hasher_threads())
    info = engine.load_checkpoint("sd1.safetensors").info
    task = engine.checkpoints.hash_later(info)
    assert len(hasher_threads()) == before + 1 and not task.done
    queued = hasher(engine).submit(engine.checkpoints.find("sd2-v.safetensors").filename)
    engine.queue.stop()  # while a hash runs (never released) and another waits
    assert len(hasher_threads()) == before
    assert task.done and task.wait(0) is None and queued.done and queued.wait(0) is None
    assert info.sha256 is None and not engine.paths.hash_cache.exists()
    # asked for after the stop: nothing starts
    assert hasher(engine).submit(info.filename).wait(0) is None and len(hasher_threads()) == before


def test_the_thread_ends_when_there_is_nothing_to_hash(tmp_path):
    files = [tmp_path / f"f{i}.bin" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * (3 << 20))
    cache = HashCache(tmp_path / "cache.json")
    gated = GatedHash()
    h = BackgroundHasher(cache, compute=gated)
    tasks = [h.submit(f) for f in files] + [h.submit(files[0])]  # the same file asked for twice: one task
    assert tasks[0] is tasks[-1] and h.running
    gated.release()
    assert [t.wait(60) for t in tasks[:3]] == [file_sha256(f) for f in files]
    wait_until(lambda: not h.running)
    assert gated.calls == ["f0.bin", "f1.bin", "f2.bin"] and tasks[0].fraction == 1.0
    # known now: answered from the cache, no thread
    assert h.submit(files[1]).wait(0) == file_sha256(files[1]) and not h.running
    h.stop()


def test_hash_cache_is_safe_across_threads(tmp_path):
    """Many threads hashing and reading at once: every hash is right and cache.json ends complete and valid."""
    files = []
    for i in range(16):
        f = tmp_path / f"f{i}.bin"
        f.write_bytes(str(i).encode() * 1000)
        files.append(f)
    cache = HashCache(tmp_path / "cache.json")
    errors: list[BaseException] = []

    def work(f):
        try:
            for _ in range(20):
                cache.cached_sha256(f)
            assert cache.sha256(f) == file_sha256(f)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(f,)) for f in files for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stored = json.loads((tmp_path / "cache.json").read_text())["hashes"]
    assert {k: v["sha256"] for k, v in stored.items()} == {str(f.resolve()): file_sha256(f) for f in files}


def test_a_request_names_a_checkpoint_by_a_hash_not_computed_yet(data_dir):
    engine = make_engine(data_dir)
    try:
        sd2 = engine.checkpoints.find("sd2-v.safetensors")
        assert sd2.sha256 is None  # never loaded, not in the cache
        sha = file_sha256(sd2.filename)
        for query in (sha[:10], sha):
            result = engine.txt2img(params(save_images=False, steps=2,
                                           override_settings={"sd_model_checkpoint": query}))
            assert result.info["sd_model_name"] == "sd2-v" and f"Model hash: {sha[:10]}," in result.infotexts[0]
        # pasting an infotext whose Model hash names a checkpoint not hashed yet either
        inpainting = engine.checkpoints.find("sub/sd1-inpainting.safetensors")
        assert inpainting.sha256 is None
        short = file_sha256(inpainting.filename)[:10]
        text = f"a cat\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Model hash: {short}"
        assert engine.paste.read(text, True).checkpoint == f"sub/sd1-inpainting.safetensors [{short}]"
        assert engine.checkpoints.find("0123456789") is None  # a hash no file has
    finally:
        engine.queue.stop()


def test_the_page_follows_the_hash_then_shows_the_titles_with_it(data_dir):
    from modules.ui import app

    engine, gated = gated_engine(data_dir)
    try:
        info = engine.load_checkpoint("sd1.safetensors").info
        assert app._same_checkpoint(engine, "sd1.safetensors", "sd1.safetensors")
        stream = app.hash_progress_stream(engine)()
        status, _ = next(stream)
        assert "Loaded sd1.safetensors; calculating its hash: 0%" in status and "<progress" in status
        gated.release()
        *_, (status, dropdown) = list(stream)
        sha = file_sha256(info.filename)
        assert f"Loaded sd1.safetensors [{sha[:10]}]" in status and dropdown.value == f"sd1.safetensors [{sha[:10]}]"
        assert f"sd1.safetensors [{sha[:10]}]" in [c[0] if isinstance(c, tuple) else c for c in dropdown.choices]
        # the dropdown may still hold the title without the hash: the same checkpoint, nothing to load
        assert app._same_checkpoint(engine, "sd1.safetensors", app._selected(engine))
        assert not app._same_checkpoint(engine, "sd2-v.safetensors", app._selected(engine))
        # once known, nothing to follow
        assert len(list(app.hash_progress_stream(engine)())) == 1
    finally:
        gated.release()
        engine.queue.stop()


def test_whoever_waits_for_a_hash_sees_what_its_listeners_did(tmp_path):
    """`HashTask.wait()` returns once the listeners have run (they give the checkpoint its title with the hash
    and update the selected-checkpoint setting), so a waiter that reads those right after sees them. A listener
    added while the others run is run too; one added after runs at once."""
    task = HashTask(tmp_path / "x.safetensors")
    seen, slow_started = [], threading.Event()

    def slow(sha):
        slow_started.set()
        time.sleep(0.3)
        seen.append(("slow", sha))

    task.add_done_callback(slow)
    finisher = threading.Thread(target=task._finish, args=("ab" * 32,))
    finisher.start()
    assert slow_started.wait(10)
    task.add_done_callback(lambda sha: seen.append(("late", sha)))  # while `slow` runs
    assert task.wait(10) == "ab" * 32
    assert seen == [("slow", "ab" * 32), ("late", "ab" * 32)]
    finisher.join(10)
    task.add_done_callback(lambda sha: seen.append(("after", sha)))
    assert seen[-1] == ("after", "ab" * 32) and task.done
