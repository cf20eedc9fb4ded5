"""Checkpoint list, titles, lookup and the hash cache."""

from __future__ import annotations

import hashlib
import json
import os
import time

from modules import cmd_args, devices, paths
from modules.hashing import HashCache
from modules.models.registry import CheckpointRegistry, VaeRegistry


def test_titles_subfolders_and_lookup(data_dir, tiny_dir):
    p = paths.from_args(str(data_dir))
    folder = p.checkpoint_dirs[-1]
    (folder / "sd1.vae.safetensors").write_bytes((tiny_dir / "sd1.safetensors").read_bytes()[:100])
    reg = CheckpointRegistry(p.checkpoint_dirs, HashCache(p.hash_cache))
    names = [i.name for i in reg.list()]
    assert names == ["sd1-ckpt.ckpt", "sd1-fp16.safetensors", "sd1.safetensors", "sd2-v.safetensors",
                     "sub/sd1-inpainting.safetensors"]  # natural order; VAE files are not checkpoints
    inp = reg.find("sd1-inpainting")
    assert inp.title == "sub/sd1-inpainting.safetensors" and inp.model_name == "sub_sd1-inpainting"
    sha = reg.ensure_hash(inp)
    assert sha == hashlib.sha256(inp.filename.read_bytes()).hexdigest()
    assert inp.title == f"sub/sd1-inpainting.safetensors [{sha[:10]}]"
    assert inp.short_title == f"sd1-inpainting [{sha[:10]}]"
    for query in (inp.title, inp.name, sha[:10], sha, "sd1-inpainting", f"sd1-inpainting [{sha[:10]}]", "inpaint"):
        assert reg.find(query) is inp, query
    assert reg.find("does-not-exist") is None
    # legacy 8-hex hashes from old infotexts resolve too
    with open(inp.filename, "rb") as f:
        f.seek(0x100000)
        legacy = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    assert reg.find(legacy) is inp
    vaes = VaeRegistry(p.vae_dirs, p.checkpoint_dirs)
    assert [v.name for v in vaes.list()] == ["sd1.vae.safetensors"]


def test_hash_is_cached_by_path_size_and_mtime(data_dir):
    p = paths.from_args(str(data_dir))
    reg = CheckpointRegistry(p.checkpoint_dirs, HashCache(p.hash_cache))
    info = reg.find("sd1.safetensors")
    sha = reg.ensure_hash(info)
    entry = json.loads(p.hash_cache.read_text())["hashes"][str(info.filename)]
    assert entry["sha256"] == sha and entry["size"] == info.filename.stat().st_size
    # A new registry knows the hash from the cache without reading the file.
    again = CheckpointRegistry(p.checkpoint_dirs, HashCache(p.hash_cache)).find("sd1.safetensors")
    assert again.sha256 == sha and again.title.endswith(f"[{sha[:10]}]")
    # A changed file is not trusted to the old hash.
    with open(info.filename, "ab") as f:
        f.write(b"\0")
    os.utime(info.filename, (time.time() + 5, time.time() + 5))
    fresh = CheckpointRegistry(p.checkpoint_dirs, HashCache(p.hash_cache)).find("sd1.safetensors")
    assert fresh.sha256 is None and fresh.title == "sd1.safetensors"
    assert fresh.filename and CheckpointRegistry(p.checkpoint_dirs, HashCache(p.hash_cache)).ensure_hash(fresh) != sha


def test_ckpt_dir_and_extra_file(tmp_path, tiny_dir):
    p = paths.from_args(str(tmp_path / "data"), ckpt_dir=str(tiny_dir / "sub"))
    reg = CheckpointRegistry(p.checkpoint_dirs, HashCache(p.hash_cache), extra_files=(tiny_dir / "sd2-v.safetensors",))
    assert [i.name for i in reg.list()] == ["sd1-inpainting.safetensors", "sd2-v.safetensors"]


def test_flags_bind_and_env(monkeypatch):
    ns = cmd_args.parse(["--port", "9000", "--xformers", "--opt-sdp-attention", "--medvram"])
    assert ns.port == 9000 and cmd_args.bind_host(ns) == "127.0.0.1"
    notes = cmd_args.ignored_flags(ns)
    assert any(n.startswith("--xformers is ignored") for n in notes) and len(notes) == 2
    assert ns.medvram and not any("--medvram" in n for n in notes)  # low-memory mode, not ignored
    assert cmd_args.bind_host(cmd_args.parse(["--listen"])) == "0.0.0.0"
    assert cmd_args.parse(["--nowebui"]).port == 7861 and cmd_args.parse([]).port == 7860
    monkeypatch.setenv("COMMANDLINE_ARGS", "--api --ckpt 'my model.safetensors'")
    monkeypatch.setattr("sys.argv", ["webui.py", "--port", "7000"])
    ns = cmd_args.parse()
    assert ns.api and ns.ckpt == "my model.safetensors" and ns.port == 7000


def test_old_torch_is_refused_and_cpu_plan():
    import pytest
    with pytest.raises(devices.UnsupportedTorch, match="CVE-2025-32434"):
        devices.check_torch_version("2.5.1+cu121")
    devices.check_torch_version("2.6.0")
    plan = devices.plan(use_cpu=["all"])
    assert plan.device.type == "cpu" and plan.unet_dtype == plan.vae_dtype == __import__("torch").float32


def test_builtin_model_is_listed_last_and_default_only_without_user_models(tmp_path, tiny_dir):
    import shutil

    from modules import bootstrap

    p = paths.from_args(str(tmp_path))
    paths.ensure_dirs(p)
    engine = bootstrap.build_engine(p, devices.plan(skip_cuda_test=True), builtin_files=(tiny_dir / "sd1.safetensors",))
    reg = engine.checkpoints
    try:
        assert [(i.name, i.builtin) for i in reg.list()] == [("builtin/sd1.safetensors", True)]
        assert engine.checkpoints.resolve().name == "builtin/sd1.safetensors"
        shutil.copy(tiny_dir / "sd2-v.safetensors", p.checkpoint_dirs[-1] / "zzz-mine.safetensors")
        reg.refresh()
        assert [i.name for i in reg.list()] == ["zzz-mine.safetensors", "builtin/sd1.safetensors"]
        assert engine.checkpoints.resolve().name == "zzz-mine.safetensors"
        assert engine.checkpoints.resolve("builtin/sd1").builtin  # still selectable by name
    finally:
        engine.queue.stop()
