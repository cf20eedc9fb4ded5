"""Shared fixtures: tiny checkpoints written once per test session in the real LDM layout."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest  # noqa: E402
import torch  # noqa: E402

from modules import devices, logs, paths  # noqa: E402
from modules import bootstrap  # noqa: E402
from modules.engine import Engine  # noqa: E402
from modules.hashing import HashCache  # noqa: E402
from modules.limits import Limits  # noqa: E402
from modules.models.manager import ModelManager  # noqa: E402
from modules.models.registry import CheckpointRegistry, VaeRegistry  # noqa: E402
from tests import tiny_models  # noqa: E402

logs.quiet_libraries()
# OMP_NUM_THREADS, when set, wins: on a machine whose cores are busy with other work, two threads that
# wait for each other make every U-Net call about 100x slower than one thread does.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or min(2, os.cpu_count() or 1))


def pytest_configure(config):
    config.addinivalue_line("markers", "launcher: runs ./webui.sh end to end (creates a venv; minutes)")
    config.addinivalue_line("markers", "server: starts webui.py as a live server on 127.0.0.1")
    config.addinivalue_line("markers", "browser: drives the page in headless Chromium (Playwright; tests/browser.py)")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A folder of tiny checkpoints, each with its YAML beside it:
    sd1.safetensors, sd1-fp16.safetensors, sd1-ckpt.ckpt, sub/sd1-inpainting.safetensors, sd2-v.safetensors."""
    d = tmp_path_factory.mktemp("tiny")
    sd1 = tiny_models.build("sd1", seed=1)
    sd1.write(d / "sd1.safetensors")
    sd1.write(d / "sd1-fp16.safetensors", dtype=torch.float16)
    sd1.write(d / "sd1-ckpt.ckpt")
    tiny_models.build("sd1", inpainting=True, seed=2).write(d / "sub" / "sd1-inpainting.safetensors")
    tiny_models.build("sd2", prediction_type="v_prediction", seed=3).write(d / "sd2-v.safetensors")
    return d


@pytest.fixture()
def data_dir(tmp_path, tiny_dir) -> Path:
    """A fresh data dir whose models/Stable-diffusion holds copies of the tiny checkpoints."""
    target = tmp_path / "models" / "Stable-diffusion"
    shutil.copytree(tiny_dir, target)
    return tmp_path


def make_manager(data: Path, builtin_files: tuple[Path, ...] = ()) -> ModelManager:
    p = paths.from_args(str(data))
    registry = CheckpointRegistry(p.checkpoint_dirs, HashCache(p.hash_cache), builtin_files=builtin_files)
    return ModelManager(registry, VaeRegistry(p.vae_dirs, p.checkpoint_dirs), devices.plan(skip_cuda_test=True),
                        p.default_sd1_config)


def make_engine(data: Path, checkpoint: str | None = "sd1.safetensors",
                builtin_files: tuple[Path, ...] = (), limits: Limits | None = None) -> Engine:
    """An engine over `data` with its own queue; `checkpoint` (if any) is the selected one. Stop its queue
    when done."""
    engine = bootstrap.build_engine(paths.from_args(str(data)), devices.plan(skip_cuda_test=True),
                                    builtin_files=builtin_files, limits=limits)
    if checkpoint:
        engine.options.update({"sd_model_checkpoint": checkpoint})
    return engine


@pytest.fixture()
def manager(data_dir) -> ModelManager:
    return make_manager(data_dir)


@contextlib.contextmanager
def started(*flags: str):
    """webui.build in this process (the app is built, not served) with these command-line flags: yields the
    engine; its queue is stopped afterwards and the process-wide switches start-up sets (flush denormals on the
    CPU, Pillow's pixel limit) are put back, so later tests see the state they would see alone."""
    from PIL import Image

    import webui
    from modules import cmd_args

    pillow_limit = Image.MAX_IMAGE_PIXELS
    _, engine = webui.build(cmd_args.parse(list(flags)))
    try:
        yield engine
    finally:
        engine.queue.stop()
        torch.set_flush_denormal(False)
        Image.MAX_IMAGE_PIXELS = pillow_limit
