"""Low-memory mode (A1111's --lowram / --medvram, setting `low_memory`): weights stored in 16 bits, each layer cast
to the compute type (float32 on a CPU) just before it runs and back after it.

SD 1.5's weights take 4.3 GB in float32 and 2.1 GB in float16. Storing them in float16 halves what a model holds,
and the computation is unchanged: every layer still computes in float32, from weights that are the float16 file's
own values (most checkpoints are published in float16), so a float16 file gives the same image as without this
mode (a float32 file's weights are rounded to float16 once, at load). What it costs is converting each layer's
weights for every call (bench/README.md has the figures).

Each large layer (convolution, linear layer, embedding) rests with float16 weights; a hook before its forward
gives it float32 copies, and one after it (also when the forward raises: an interrupt) puts the float16 tensors
back, so one conversion per layer and call (diffusers' layerwise-casting hook converts both ways, twice the cost,
measured). The few other weights (the norms) are kept in the compute type. The float16 tensors are the
parameters' own data while the layer rests, so LoRA patches them in place and a release frees them.

Outside this mode the same storage keeps the text encoders of a 16-bit file (`file_storage`) in the file's own type
(`exact=True`): they run once or twice per job, so converting their layers costs little, and the values they
compute with are the file's, as when cast at load. SDXL's two encoders hold 1.6 GB instead of 3.3 GB that way. A
LoRA change to such a layer is made and kept in the compute type (`patch_dtype`), as it would be on weights loaded
in it, so a job's image is the same bit for bit as with the encoders held in float32.

A1111's FP8 weight (setting fp8_storage, `Fp8`) uses the same storage with a narrower type: the convolutions and
linear layers of the U-Net and the text encoders (weights and biases, as A1111's `module.to(torch.float8_e4m3fn)`)
rest in float8_e4m3fn, rounded once from the values the model computes with, and are widened by the same hooks.
The image is then exactly that of the model with those values rounded to FP8. With or without low-memory mode:
with it, the other large layers rest in 16 bits. A LoRA change to an FP8 layer is rounded into it (as in A1111),
starting from a float16 copy of the layer's values when cache_fp16_weight kept one.

In this mode the text encoders are also parked while the U-Net runs (`ParkedWeights`): their 16-bit weights are
written once to an unnamed file in the data folder's cache and read back for the next prompt, so they do not add
to the sampling's peak (SDXL's are 1.6 GB).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.models.activations import GEGLU

log = logging.getLogger(__name__)

STORAGE = torch.float16
CAST_LAYERS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear, torch.nn.Embedding)
# Modules whose forward may multiply by a child layer's weights without calling that layer (on a CPU the GEGLU runs
# its `proj` weight's halves through oneDNN itself: optimizations.OneDnnGEGLU): their layers are cast as one unit,
# by hooks on the module, so that the fused forward sees the compute type, as the layer's own forward would.
CAST_UNITS = (GEGLU,)
_COMPUTE = "_webui_compute_dtype"  # set on each part of a module stored this way: the type it computes in
_RESTING = "_webui_resting"  # while a layer runs: its float16 tensors
_EXACT = "_webui_exact"  # set on each part stored with exact=True: a LoRA change widens the weight (patch_dtype)
_FP16_COPY = "_webui_fp16_copy"  # on an fp8 layer with fp16 copies: {parameter name: its float16 copy, on the CPU}
SIXTEEN_BITS = (torch.float16, torch.bfloat16)
# A1111's FP8 weight (setting fp8_storage): the weights and biases of every convolution and linear layer of the U-Net
# and the text encoders rest in float8_e4m3fn and are widened as each layer runs (the VAE stays as it is).
FP8 = torch.float8_e4m3fn
FP8_LAYERS = (torch.nn.Conv2d, torch.nn.Linear)
NARROW = (*SIXTEEN_BITS, FP8)  # the types a stored layer's weights rest in


@dataclass(frozen=True)
class Fp8:
    """How a model keeps A1111's FP8 weights (see store): not at all, or with or without float16 copies."""
    on: bool = False
    fp16_copies: bool = False  # A1111's cache_fp16_weight

    def describe(self) -> str:
        return ("FP8 weights" + (" with float16 copies for LoRA" if self.fp16_copies else "")) if self.on else ""


def fp8_wanted(mode: str, family: str | None) -> bool:
    """Whether a model of `family` keeps FP8 weights under A1111's setting fp8_storage `mode`: Enable, or Enable for
    SDXL for the SDXL families (A1111's is_sdxl: the refiner too)."""
    return mode == "Enable" or (mode == "Enable for SDXL" and bool(family) and family.startswith("sdxl"))


def wanted(mode: str, family: str | None) -> bool:
    """Whether a model of `family` (None: not known before loading) loads in low-memory mode under setting
    `mode`: On, or SDXL only (A1111's --medvram-sdxl) for the SDXL families."""
    return mode == "On" or (mode == "SDXL only" and bool(family) and family.startswith("sdxl"))


def store(module: torch.nn.Module, compute: torch.dtype, storage: torch.dtype = STORAGE,
          exact: bool = False, fp8: bool = False, fp16_copies: bool = False) -> torch.nn.Module:
    """Keep `module`'s large layers' weights in `storage` (16 bits), cast to `compute` while each runs; the rest in
    `compute`. `exact`: the weights are in `storage` already (the file's type), and LoRA changes are made in
    `compute` (see patch_dtype). `fp8` (A1111's fp8_storage): the convolutions and linear layers rest in FP8
    instead, weights and biases, rounded from the values they have now (the compute type's, as A1111 rounds
    the model's own); `storage` may then be `compute`, to narrow only those. `fp16_copies` (A1111's
    cache_fp16_weight): each FP8 layer also keeps float16 copies of its values from before, on the CPU, for LoRA to
    start from (`fp16_copy`). Done once per module (a module already stored this way is returned as it is)."""
    if is_stored(module):
        return module
    in_units = {id(m) for unit in module.modules() if isinstance(unit, CAST_UNITS) for m in unit.modules()}
    for sub in module.modules():
        cast = isinstance(sub, CAST_LAYERS)
        eight = fp8 and isinstance(sub, FP8_LAYERS)
        params = [(name, p) for name, p in sub.named_parameters(recurse=False) if p.is_floating_point()]
        if eight and fp16_copies:
            setattr(sub, _FP16_COPY, {name: p.data.to("cpu", torch.float16, copy=True) for name, p in params})
        for _, param in params:  # an FP8 layer through the compute type: A1111 rounds what a half() model holds
            param.data = param.data.to(compute).to(FP8) if eight else param.data.to(storage if cast else compute)
        for name, buffer in sub.named_buffers(recurse=False):
            if buffer.is_floating_point() and buffer.dtype != compute:
                sub.register_buffer(name, buffer.to(compute), persistent=name not in sub._non_persistent_buffers_set)
        setattr(sub, _COMPUTE, compute)  # on every part, so that any part tells its compute type
        setattr(sub, _EXACT, exact)
    for sub in module.modules():  # once all are narrowed: a unit's layers come after it
        unit = isinstance(sub, CAST_UNITS)
        narrowed = any(p.dtype != compute for p in sub.parameters(recurse=unit) if p.is_floating_point())
        if narrowed and (unit or (isinstance(sub, CAST_LAYERS) and id(sub) not in in_units)):
            sub.register_forward_pre_hook(_widen(compute, recurse=unit))
            sub.register_forward_hook(_narrow, always_call=True)
    return module


def file_storage(module: torch.nn.Module) -> torch.dtype | None:
    """The 16-bit type that all of `module`'s large layers' weights have (as read from a 16-bit file), or None
    (float32 weights, or mixed types): what `store(..., exact=True)` may keep them in without changing a value."""
    types = {p.dtype for sub in module.modules() if isinstance(sub, CAST_LAYERS)
             for p in sub.parameters(recurse=False) if p.is_floating_point()}
    return types.pop() if len(types) == 1 and types <= set(SIXTEEN_BITS) else None


def patch_dtype(layer: torch.nn.Module, param: torch.nn.Parameter) -> torch.dtype:
    """The type in which a change to `param` of `layer` (LoRA) is computed and kept: the compute type for a layer
    stored with exact=True (the weight is widened for good, until the change is taken out), else its own type
    (low-memory mode rounds a change into the 16-bit weight, as on a GPU)."""
    return getattr(layer, _COMPUTE) if getattr(layer, _EXACT, False) else param.dtype


def fp16_copy(layer: torch.nn.Module, name: str) -> torch.Tensor | None:
    """The float16 copy `store(..., fp16_copies=True)` kept of an FP8 layer's parameter `name`, or None."""
    return getattr(layer, _FP16_COPY, {}).get(name)


def drop_fp16_copies(module: torch.nn.Module) -> None:
    for sub in module.modules():
        if hasattr(sub, _FP16_COPY):
            delattr(sub, _FP16_COPY)


def holds_fp8(module: torch.nn.Module) -> bool:
    """Whether any of `module`'s weights rest in FP8 (see store)."""
    return any(p.dtype == FP8 for p in module.parameters())


def _widen(compute: torch.dtype, recurse: bool = False):
    def hook(layer: torch.nn.Module, _args) -> None:
        params = [p for p in layer.parameters(recurse=recurse) if p.is_floating_point() and p.dtype != compute]
        setattr(layer, _RESTING, [(p, p.data) for p in params])
        for p in params:
            p.data = p.data.to(compute)
    return hook


def _narrow(layer: torch.nn.Module, _args, _output) -> None:
    for param, data in getattr(layer, _RESTING, ()):
        param.data = data
    setattr(layer, _RESTING, ())


def is_stored(module: torch.nn.Module) -> bool:
    return getattr(module, _COMPUTE, None) is not None


def compute_dtype(module: torch.nn.Module) -> torch.dtype:
    """The type `module` computes in: its weights' own, or the compute type of one stored this way."""
    return getattr(module, _COMPUTE, None) or next(module.parameters()).dtype


def weight_bytes(module: torch.nn.Module) -> int:
    """What the module's weights hold in memory now (none on the meta device: a released model's), with the
    float16 copies of FP8 layers; the tests compare the modes by it, the model manager the memory a model in use
    holds."""
    params = sum(p.numel() * p.element_size() for p in module.parameters() if not p.is_meta)
    copies = sum(t.numel() * t.element_size() for sub in module.modules()
                 for t in getattr(sub, _FP16_COPY, {}).values())
    return params + copies


class ParkedWeights:
    """A stored module's 16-bit weights, moved out of memory between uses: `park` writes them to an unnamed file
    (the first time: the values do not change while they may be parked, see ModelManager) and leaves the
    parameters empty; `ready` reads them back into new tensors. The file has no name (the system deletes it
    when it is closed, also after a crash) and lives in `folder`, on disk (not /tmp, which may be memory).
    Parameters stay the same objects, so LoRA's backups and hooks keep pointing at them."""

    def __init__(self, module: torch.nn.Module, folder: Path):
        self.module, self.folder = module, folder
        self._file = None
        self._layout: list[tuple[torch.nn.Parameter, int, torch.Size, torch.dtype, torch.device]] = []
        self.parked = False
        self.nbytes = 0  # what the file holds
        self.write_seconds = self.read_seconds = 0.0  # the write, and the latest read back (bench/txt2img.py)

    def _params(self) -> list[torch.nn.Parameter]:
        return [p for sub in self.module.modules() if isinstance(sub, CAST_LAYERS)
                for p in sub.parameters(recurse=False) if p.dtype in NARROW]

    def _write(self) -> None:
        start = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        f = tempfile.TemporaryFile(dir=self.folder)
        try:
            offset, layout = 0, []
            for p in self._params():
                raw = p.data.detach().to("cpu").contiguous().view(torch.uint8).reshape(-1)
                f.write(memoryview(raw.numpy()))
                layout.append((p, offset, p.shape, p.dtype, p.device))
                offset += raw.numel()
            f.flush()
        except BaseException:
            f.close()
            raise
        self._file, self._layout, self.nbytes = f, layout, offset
        self.write_seconds = time.perf_counter() - start

    def park(self) -> bool:
        """Free the weights (written to the file first, once). False (and nothing changed) when the file cannot be
        written: the weights then stay in memory."""
        if self.parked:
            return True
        if self._file is None:
            try:
                self._write()
            except OSError as e:
                log.warning("Could not write weights to park to %s (%s); they stay in memory", self.folder, e)
                return False
        for p, *_ in self._layout:
            p.data = p.data.new_empty(0)
        self.parked = True
        return True

    def ready(self) -> None:
        """The weights back in memory, as they were when parked."""
        if not self.parked:
            return
        start = time.perf_counter()
        for p, offset, shape, dtype, device in self._layout:
            t = torch.empty(shape, dtype=dtype)
            view = memoryview(t.view(torch.uint8).reshape(-1).numpy())
            self._file.seek(offset)
            done = 0
            while done < len(view):
                n = self._file.readinto(view[done:])
                if not n:
                    raise OSError(f"the parked weights file ended early (at byte {offset + done})")
                done += n
            p.data = t.to(device)
        self.parked = False
        self.read_seconds = time.perf_counter() - start

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file, self._layout = None, []
