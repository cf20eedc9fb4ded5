"""--ckpt at start-up: it becomes the selected checkpoint at once (as A1111 sets the option from it), also
when config.json remembers another one, and a symlinked file is found through its link."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.support.engine import started


def start(data, *flags):
    return started("--data-dir", str(data), "--nowebui", "--no-builtin-model", *flags)


@pytest.mark.parametrize("linked", [False, True])
def test_ckpt_wins_over_the_remembered_checkpoint(tmp_path, tiny_dir, linked):
    data = tmp_path / "data"
    shutil.copytree(tiny_dir, data / "models" / "Stable-diffusion")
    (data / "config.json").write_text(json.dumps({"sd_model_checkpoint": "sd1-fp16.safetensors"}))
    shared = tmp_path / "shared-models"  # e.g. another app's folder
    shared.mkdir()
    shutil.copy(tiny_dir / "sd1.safetensors", shared / "elsewhere.safetensors")
    shutil.copy(tiny_dir / "sd1.yaml", shared / "elsewhere.yaml")
    ckpt = shared / "elsewhere.safetensors"
    if linked:
        os.symlink(ckpt, tmp_path / "link.safetensors")
        ckpt = tmp_path / "link.safetensors"
    with start(data, "--ckpt", str(ckpt)) as engine:
        # selected before the load has even run, so the page and the first job agree on it
        assert engine.options.values.sd_model_checkpoint.startswith("elsewhere.safetensors")
        assert engine.checkpoints.startup_error is None
        model = engine.load_checkpoint()  # waits for the start-up load in the queue
        assert model.info.filename == (shared / "elsewhere.safetensors").resolve()
        assert json.loads((data / "config.json").read_text())["sd_model_checkpoint"].startswith("elsewhere")


def test_a_missing_ckpt_is_said_not_swapped_silently(tmp_path, tiny_dir, caplog):
    data = tmp_path / "data"
    shutil.copytree(tiny_dir, data / "models" / "Stable-diffusion")
    os.symlink(tmp_path / "gone.safetensors", tmp_path / "dangling.safetensors")
    with start(data, "--ckpt", str(tmp_path / "dangling.safetensors")) as engine:
        assert "not found" in (engine.checkpoints.startup_error or "")  # shown in the page's status line
        assert any("--ckpt" in r.getMessage() and "the link points to" in r.getMessage() for r in caplog.records)
        assert engine.checkpoints.current is None
