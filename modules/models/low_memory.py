"""Low-memory mode (A1111's --lowram / --medvram, setting `low_memory`): weights stored in 16 bits, each layer cast
to the compute type (float32 on a CPU) just before it runs and back after it.

SD 1.5's weights take 4.3 GB in float32 and 2.1 GB in float16. Storing them in float16 halves what a model holds,
and the computation is unchanged: every layer still computes in float32, from weights that are the float16 file's
own values (most checkpoints are published in float16), so a float16 file gives the same image as without this
mode (a float32 file's weights are rounded to float16 once, at load). What it costs is converting each layer's
weights for every call (bench/README.md has the figures).

The casting is diffusers' layerwise-casting hook (`diffusers.hooks.apply_layerwise_casting`), applied to the
layers that hold nearly all the weights (convolutions, linear layers, embeddings); the few others (the norms) are
kept in the compute type, since they take their input's type as it comes.
"""

from __future__ import annotations

import torch
from diffusers.hooks import apply_layerwise_casting

MODES = ("Off", "On", "SDXL only")
STORAGE = torch.float16
_MARK = "_webui_low_memory"  # set on a module whose weights are stored this way


def wanted(mode: str, family: str | None) -> bool:
    """Whether a model of `family` (None: not known before loading) loads in low-memory mode under setting
    `mode`: On, or SDXL only (A1111's --medvram-sdxl) for the SDXL families."""
    return mode == "On" or (mode == "SDXL only" and bool(family) and family.startswith("sdxl"))


def store(module: torch.nn.Module, compute: torch.dtype) -> torch.nn.Module:
    """Keep `module`'s large layers' weights in float16, cast to `compute` while each runs; the rest in `compute`.
    Done once per module (a module already stored this way is returned as it is)."""
    if getattr(module, _MARK, False):
        return module
    apply_layerwise_casting(module, storage_dtype=STORAGE, compute_dtype=compute, skip_modules_pattern=None,
                            skip_modules_classes=())
    for sub in module.modules():
        if getattr(sub, "_diffusers_hook", None) is not None and sub._diffusers_hook.get_hook("layerwise_casting"):
            continue
        for param in sub.parameters(recurse=False):
            if param.is_floating_point() and param.dtype != compute:
                param.data = param.data.to(compute)
        for name, buffer in sub.named_buffers(recurse=False):
            if buffer.is_floating_point() and buffer.dtype != compute:
                sub.register_buffer(name, buffer.to(compute), persistent=name not in sub._non_persistent_buffers_set)
    setattr(module, _MARK, True)
    return module


def is_stored(module: torch.nn.Module) -> bool:
    return bool(getattr(module, _MARK, False))


def weight_bytes(module: torch.nn.Module) -> int:
    """What the module's weights hold now (for the log and the tests)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
