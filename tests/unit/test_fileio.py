"""Atomic writes leave files as a plain write would (the umask's permissions, or the replaced file's), and the
temporary files a killed write leaves behind are removed at the next start."""

from __future__ import annotations

import os
import stat
import time

import pytest

from modules import fileio
from modules.hashing import HashCache
from modules.settings import SettingsStore


@pytest.fixture()
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask: int) -> None:
        os.umask(mask)
    yield set_mask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX's")
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    fileio.atomic_write_bytes(tmp_path / "image.png", b"x")
    fileio.atomic_write_json(tmp_path / "config.json", {"a": 1})
    assert mode(tmp_path / "image.png") == expected
    assert mode(tmp_path / "config.json") == expected


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX's")
def test_a_replaced_file_keeps_its_permissions(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "config.json"
    target.write_text("{}")
    os.chmod(target, 0o640)  # the owner made it private to a group
    fileio.atomic_write_json(target, {"b": 2})
    assert mode(target) == 0o640 and target.read_text().strip().startswith("{")


def test_leftover_temporary_files_are_removed_at_start(tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"n_rows": 3}')
    old = tmp_path / ".config.json.ab12cd.tmp"
    fresh = tmp_path / ".config.json.ef34gh.tmp"  # a write in progress elsewhere: not touched
    other = tmp_path / ".cache.json.ij56kl.tmp"
    for f in (old, fresh, other):
        f.write_text("partial")
    stale = time.time() - fileio.STALE_SECONDS - 5
    os.utime(old, (stale, stale))
    os.utime(other, (stale, stale))
    store = SettingsStore(config)
    assert store.values.n_rows == 3
    assert not old.exists() and fresh.exists() and other.exists()
    HashCache(tmp_path / "cache.json")
    assert not other.exists()


def test_a_settings_store_without_a_file_keeps_its_changes_in_memory_and_writes_nothing(tmp_path, monkeypatch):
    """A cluster replica's settings: the checkpoint it selects is kept, and no file appears anywhere (it used to
    leave a temporary folder behind per replica start)."""
    monkeypatch.chdir(tmp_path)
    store = SettingsStore(None)
    store.update({"n_rows": 2})
    store.save()
    assert store.values.n_rows == 2 and store.path is None
    assert not any(tmp_path.iterdir())
