"""Shared fixtures (tiny checkpoints written once per test session in the real LDM layout, data folders, a model
manager), the markers, and the markers every test of tests/browser, tests/launcher and tests/cuda gets from its
folder.
Helpers and the fixtures only some modules use are in tests/support."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

from modules import offline  # first: the libraries read their switches when they are imported

offline.apply()

import pytest  # noqa: E402
import torch  # noqa: E402

from modules import logs  # noqa: E402
from modules.models.manager import ModelManager  # noqa: E402
from tests.support import tiny_models  # noqa: E402
from tests.support.engine import make_manager  # noqa: E402

logs.quiet_libraries()
# OMP_NUM_THREADS, when set, wins: on a machine whose cores are busy with other work, two threads that
# wait for each other make every U-Net call about 100x slower than one thread does.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or min(2, os.cpu_count() or 1))


# Every test in these folders gets the marker, so `-m "not browser and not launcher"` (./run_tests.sh --fast)
# and `-m "not cuda"` (every ./run_tests.sh run) leave them out whatever their modules say.
FOLDER_MARKERS = {"browser": "browser", "launcher": "launcher", "cuda": "cuda"}


def pytest_configure(config):
    config.addinivalue_line("markers", "launcher: runs ./webui.sh end to end (creates a venv; minutes); all of "
                                       "tests/launcher")
    config.addinivalue_line("markers", "server: starts webui.py as a live server on 127.0.0.1")
    config.addinivalue_line("markers", "browser: drives the page in headless Chromium (Playwright; "
                                       "tests/support/browser.py); all of tests/browser")
    config.addinivalue_line("markers", "ray: starts Ray Serve replicas (--ray-workers; requirements-ray.txt); "
                                       "./run_tests.sh --fast leaves them out")
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU and fails without one (never skips); all of "
                                       "tests/cuda. ./run_tests.sh deselects them; bench/gpu_check.sh runs them")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        try:
            folder = item.path.relative_to(here).parts[0]
        except ValueError:
            continue
        if folder in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[folder])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the item (item.rep_call, ...): a fixture's teardown can then tell whether
    its test failed (the browser `page` fixture prints the page's and the server's state when it did)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


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


@pytest.fixture()
def manager(data_dir) -> Iterator[ModelManager]:
    m = make_manager(data_dir)
    yield m
    m.checkpoints.hasher.stop()  # its background hash of a loaded file, if still running
