"""Engines and model managers over a data folder, built as start-up builds them (bench/ and tools/ use them too)."""

from __future__ import annotations

import contextlib
import shutil
import warnings
from pathlib import Path

import torch

from modules import bootstrap, devices, paths
from modules.engine import Engine
from modules.hashing import HashCache
from modules.limits import Limits
from modules.models import checkpoint_file, families
from modules.models.manager import ModelManager
from modules.models.registry import CheckpointRegistry, VaeRegistry


def detect(path: Path):
    """The config families.detect gives a checkpoint file (its tensors and metadata read as the loader reads them)."""
    sd = checkpoint_file.read_state_dict(path)
    return families.detect(path, sd, checkpoint_file.read_metadata(path), paths.CONFIGS / "v1-inference.yaml")


def make_manager(data: Path, builtin_files: tuple[Path, ...] = (), memory_limit: int | None = None) -> ModelManager:
    p = paths.from_args(str(data))
    registry = CheckpointRegistry(p.checkpoint_dirs, HashCache(p.hash_cache), builtin_files=builtin_files)
    return ModelManager(registry, VaeRegistry(p.vae_dirs, p.checkpoint_dirs), devices.plan(skip_cuda_test=True),
                        p.default_sd1_config, memory_limit=memory_limit)


def tiny_data(tiny_dir: Path, data: Path) -> Path:
    """`data` made a data folder holding copies of the tiny checkpoints (the `tiny_dir` fixture's)."""
    shutil.copytree(tiny_dir, data / "models" / "Stable-diffusion")
    paths.ensure_dirs(paths.from_args(str(data)))
    return data


def make_engine(data: Path, checkpoint: str | None = "sd1.safetensors",
                builtin_files: tuple[Path, ...] = (), limits: Limits | None = None) -> Engine:
    """An engine over `data` (bootstrap's wiring) with its own queue; `checkpoint` (if any) is the selected one.
    Stop its queue when done."""
    engine = bootstrap.build_engine(paths.from_args(str(data)), devices.plan(skip_cuda_test=True),
                                    builtin_files=builtin_files, limits=limits)
    if checkpoint:
        engine.options.update({"sd_model_checkpoint": checkpoint})
    return engine


@contextlib.contextmanager
def started(*flags: str):
    """webui.build in this process (the app is built, not served) with these command-line flags: yields the
    engine; its queue is stopped afterwards and the process-wide switches start-up sets (flush denormals on the
    CPU, Pillow's pixel limit and its warning filter) are put back, so later tests see the state they would see
    alone, with or without pytest's warnings plugin. glibc's allocator switch (devices.keep_freed_memory) cannot
    be put back; it changes where memory comes from, not results."""
    from PIL import Image

    import webui
    from modules import cmd_args

    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():  # start-up turns Pillow's decompression-bomb warning into an error
        _, engine = webui.build(cmd_args.parse(list(flags)))
        try:
            yield engine
        finally:
            engine.queue.stop()
            torch.set_flush_denormal(False)
            Image.MAX_IMAGE_PIXELS = pillow_limit


def encoded_positions(model, prompt: str, negative: str, steps: int) -> tuple[int, int]:
    """(all, longest): the positions of the distinct contexts the model's encoder makes for these prompts,
    read from what it encodes (what PromptEncoder.context_positions counts before encoding)."""
    cond, uncond = model.text.encode_prompt(prompt, steps), model.text.encode_negative(negative, steps)
    schedules = [scheduled for scheduled, _ in cond.parts] + [uncond]
    contexts = {id(c.context): c.context for s in schedules for _, c in s.entries}
    return sum(z.shape[0] for z in contexts.values()), max(z.shape[0] for z in contexts.values())


LONG_PROMPT = ("a [red:blue:2] circle, " * 30 + "BREAK a square AND a cat [on a mat|in a hat], " * 3, "ugly, " * 40)
