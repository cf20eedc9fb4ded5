"""Hypernetworks (A1111's `modules/hypernetworks`): find the files, read them, hook them into a U-Net.

A hypernetwork file is what A1111's `torch.save` writes: a dict whose integer keys are context widths (768, 1024,
320, 640, 1280, ...) and map to a pair of state dicts, one module for the keys and one for the values
(`linear.N.weight`/`linear.N.bias`; the first files named them `linear1`/`linear2`), plus how the modules are
built: `layer_structure` (default [1, 2, 1]), `activation_func`, `is_layer_norm`, `use_dropout`,
`dropout_structure`, `last_layer_dropout`, `activate_output`, and facts (`name`, `step`, `sd_checkpoint`,
`sd_checkpoint_name`, `weight_initialization`). It is read with the safe loader (`checkpoint_file.read_object`):
a file that asks to import anything is refused, as a `.ckpt` is.

A module is Linear layers of widths `dim * layer_structure[i]`, the activation between them (after the last one
too when `activate_output`), an optional LayerNorm after each, and dropout where the file says (off at
inference); it gives `x + module(x) * multiplier`. A1111 runs it on the context of every attention layer of the
U-Net whose width has a module, before `to_k` (the first module) and `to_v` (the second); self-attention too,
whose context is the hidden states themselves. Several hypernetworks are chained in the prompt's order.

Here that is a forward pre-hook on each `to_k` and `to_v` Linear of the U-Net (`HypernetworkHooks`): nothing of
the model is changed, so whatever attention processor is set and LoRA merged into the weights work as they are,
and taking the hooks off gives the model back exactly as it was.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch

from modules.hashing import BLOCK
from modules.models import checkpoint_file, low_memory
from modules.models.previews import preview_beside
from modules.models.registry import natural_key

log = logging.getLogger(__name__)

HYPERNETWORK_EXTENSIONS = (".pt",)


def _activations() -> dict[str, type[torch.nn.Module]]:
    """A1111's table: its own names (`swish` is Hardswish there) plus every class of torch.nn's activation module
    under its lower-case name (`gelu`, `silu`, `mish`, `softplus`, ...). `linear` means no activation."""
    table: dict[str, type[torch.nn.Module]] = {
        "linear": torch.nn.Identity, "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU, "elu": torch.nn.ELU,
        "swish": torch.nn.Hardswish, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}
    for name, cls in inspect.getmembers(torch.nn.modules.activation, inspect.isclass):
        if cls.__module__ == "torch.nn.modules.activation":
            table[name.lower()] = cls
    return table


ACTIVATIONS = MappingProxyType(_activations())

# The first hypernetwork files' names for the two layers of a [1, 2, 1] module without activation.
_OLD_NAMES = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
              "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}


class HypernetworkError(Exception):
    """A hypernetwork file that cannot be used, with a message for the user."""


# --- the file ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Structure:
    """How each module of a file is built (the same for every width)."""
    layer_structure: tuple[float, ...] = (1, 2, 1)
    activation: str | None = None  # None and "linear": no activation
    layer_norm: bool = False
    dropout_structure: tuple[float, ...] = (0, 0, 0)  # a Dropout after layer i-1 where [i] > 0 (off at inference)
    activate_output: bool = True  # A1111's default for a file that does not say


def dropout_structure(layer_structure, use_dropout: bool, last_layer_dropout: bool) -> tuple[float, ...]:
    """A1111's dropout for files saved before `dropout_structure` existed: 0.3 after every hidden layer but the
    last (that one too with `last_layer_dropout`), none at the ends; none at all without `use_dropout`."""
    n = len(layer_structure)
    if not use_dropout:
        return (0.0,) * n
    return (0.0, *([0.3] * (n - 3)), 0.3 if last_layer_dropout else 0.0, 0.0)


@dataclass
class HypernetworkFile:
    """What a file holds: the structure, the (k, v) state dicts by width, and the facts A1111 saves with them."""
    structure: Structure
    layers: dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]
    name: str | None = None
    step: int = 0
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    weight_initialization: str = "Normal"


def _numbers(value, what: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) for v in value):
        raise HypernetworkError(f"{what} must be a list of numbers (found {value!r})")
    return tuple(value)


def _state_dict(sd, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise HypernetworkError(f"{where} is not a state dict of tensors")
    return {_OLD_NAMES.get(str(k), str(k)): v for k, v in sd.items()}


def parse(data) -> HypernetworkFile:
    """A1111's hypernetwork dict read and checked (HypernetworkError saying what is wrong)."""
    if not isinstance(data, dict):
        raise HypernetworkError(f"not a hypernetwork (the file holds a {type(data).__name__}, not a dict)")
    layer_structure = _numbers(data.get("layer_structure") or [1, 2, 1], "layer_structure")
    if len(layer_structure) < 2 or layer_structure[0] != 1 or layer_structure[-1] != 1:
        raise HypernetworkError(f"layer_structure must start and end with 1 (found {list(layer_structure)})")
    activation = data.get("activation_func")
    if activation is not None and activation not in ACTIVATIONS:
        raise HypernetworkError(f"unsupported activation function {activation!r}")
    dropouts = data.get("dropout_structure")
    if dropouts is None:  # saved before A1111 wrote it: from use_dropout and last_layer_dropout
        dropouts = dropout_structure(layer_structure, bool(data.get("use_dropout", False)),
                                     bool(data.get("last_layer_dropout", False)))
    dropouts = _numbers(dropouts, "dropout_structure")
    if len(dropouts) != len(layer_structure) or not all(0 <= p < 1 for p in dropouts):
        raise HypernetworkError(f"dropout_structure {list(dropouts)} does not fit layer_structure "
                                f"{list(layer_structure)} (one value in [0, 1) per entry)")
    structure = Structure(layer_structure, activation, bool(data.get("is_layer_norm", False)), dropouts,
                          bool(data.get("activate_output", True)))
    layers = {}
    for width, pair in data.items():
        if not isinstance(width, int) or isinstance(width, bool):
            continue
        if width <= 0 or not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise HypernetworkError(f"width {width}: expected a pair of state dicts (k, v)")
        layers[width] = (_state_dict(pair[0], f"width {width} (k)"), _state_dict(pair[1], f"width {width} (v)"))
    if not layers:
        raise HypernetworkError("no modules (no integer context-width keys)")
    step = data.get("step")
    return HypernetworkFile(structure, layers, _text(data.get("name")), step if isinstance(step, int) else 0,
                            _text(data.get("sd_checkpoint")), _text(data.get("sd_checkpoint_name")),
                            _text(data.get("weight_initialization")) or "Normal")


def _text(value) -> str | None:
    return str(value) if value is not None else None


def read(path: Path) -> HypernetworkFile:
    """A file read with the safe loader and parsed; HypernetworkError naming the file when it cannot be used."""
    try:
        return parse(checkpoint_file.read_object(path))
    except checkpoint_file.CheckpointError as e:
        raise HypernetworkError(str(e)) from None
    except HypernetworkError as e:
        raise HypernetworkError(f"{Path(path).name}: {e}") from None


# --- the modules -------------------------------------------------------------------------------------------------

def build_layers(dim: int, structure: Structure) -> torch.nn.Sequential:
    """A1111's `linear` Sequential for context width `dim`, in the same order, so the files' `linear.N` indices
    name the same layers: Linear, activation (not after the last Linear unless `activate_output`; none for
    `linear`), LayerNorm, Dropout (in eval mode: nothing)."""
    sizes = structure.layer_structure
    parts: list[torch.nn.Module] = []
    for i in range(len(sizes) - 1):
        width = int(dim * sizes[i + 1])
        parts.append(torch.nn.Linear(int(dim * sizes[i]), width))
        last = i >= len(sizes) - 2
        if structure.activation not in (None, "linear") and (not last or structure.activate_output):
            parts.append(ACTIVATIONS[structure.activation]())
        if structure.layer_norm:
            parts.append(torch.nn.LayerNorm(width))
        if structure.dropout_structure[i + 1] > 0:
            parts.append(torch.nn.Dropout(p=float(structure.dropout_structure[i + 1])))
    return torch.nn.Sequential(*parts).eval().requires_grad_(False)


class HypernetworkModule(torch.nn.Module):
    """One module of one width: `x + linear(x) * multiplier`, computed in the type of its weights and given back
    in the type of `x`."""

    def __init__(self, dim: int, structure: Structure, state_dict: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.linear = build_layers(dim, structure)
        if state_dict is not None:
            try:
                self.linear.load_state_dict({k.removeprefix("linear."): v for k, v in state_dict.items()})
            except RuntimeError as e:
                raise HypernetworkError(f"width {dim}: the weights do not fit the layer structure "
                                        f"({' '.join(str(e).split())[:400]})") from None
        self.eval()

    def forward(self, x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        dtype = next(self.linear.parameters()).dtype
        h = x.to(dtype)
        return (h + self.linear(h) * multiplier).to(x.dtype)


@dataclass
class Hypernetwork:
    """A file's modules built and placed: (k, v) by context width."""
    name: str
    filename: Path
    mtime: float
    layers: dict[int, tuple[HypernetworkModule, HypernetworkModule]]

    @classmethod
    def load(cls, info: HypernetworkInfo, device: torch.device, dtype: torch.dtype) -> Hypernetwork:
        data = read(info.filename)
        try:
            layers = {w: (HypernetworkModule(w, data.structure, k), HypernetworkModule(w, data.structure, v))
                      for w, (k, v) in data.layers.items()}
        except HypernetworkError as e:
            raise HypernetworkError(f"{info.filename.name}: {e}") from None
        for pair in layers.values():
            for module in pair:
                module.to(device=device, dtype=dtype)
        return cls(info.name, info.filename, info.mtime, layers)


def attention_projections(unet: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(to_k, to_v) of every attention layer of the U-Net (diffusers' `Attention`: cross- and self-attention)."""
    return [(m.to_k, m.to_v) for m in unet.modules()
            if isinstance(getattr(m, "to_k", None), torch.nn.Linear) and isinstance(getattr(m, "to_v", None),
                                                                                     torch.nn.Linear)]


def _pre_hook(chain: list[tuple[Hypernetwork, float]], which: int):
    """A forward pre-hook for `to_k` (which=0) or `to_v` (1): its input run through each hypernetwork of the
    chain that has a module for its width."""
    def hook(_layer: torch.nn.Module, args: tuple):
        x = args[0]
        for network, multiplier in chain:
            pair = network.layers.get(x.shape[-1])
            if pair is not None:
                x = pair[which](x, multiplier)
        return (x, *args[1:])
    return hook


class HypernetworkHooks:
    """The hypernetworks applied to one loaded U-Net: loaded once per file (kept while jobs keep naming it) and
    hooked before every `to_k`/`to_v`; `apply([])` takes every hook off."""

    def __init__(self, unet: torch.nn.Module):
        self._unet = unet
        self._loaded: dict[Path, Hypernetwork] = {}
        self._handles: list = []
        self.active: list[tuple[Hypernetwork, float]] = []

    def _compute_dtype(self) -> torch.dtype:
        pairs = attention_projections(self._unet)
        return low_memory.compute_dtype(pairs[0][0]) if pairs else torch.float32

    def load(self, info: HypernetworkInfo) -> Hypernetwork:
        """The file's modules on the U-Net's device, in the type its attention computes in (low-memory mode: the
        compute type, not the 16-bit storage); read again when the file changed."""
        known = self._loaded.get(info.filename)
        if known is not None and known.mtime == info.mtime:
            return known
        device = next(self._unet.parameters()).device
        network = Hypernetwork.load(info, device, self._compute_dtype())
        self._loaded[info.filename] = network
        return network

    def apply(self, chain: list[tuple[Hypernetwork, float]]) -> None:
        """Hook `chain` (hypernetworks with their multipliers, in order) into the U-Net, in place of what was
        hooked before; files no longer named are forgotten."""
        self.remove()
        keep = {network.filename for network, _ in chain}
        self._loaded = {path: net for path, net in self._loaded.items() if path in keep}
        self.active = list(chain)
        if not chain:
            return
        for to_k, to_v in attention_projections(self._unet):
            self._handles.append(to_k.register_forward_pre_hook(_pre_hook(self.active, 0)))
            self._handles.append(to_v.register_forward_pre_hook(_pre_hook(self.active, 1)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.active = []

    def forget(self) -> None:
        """Take the hooks off and drop the loaded modules (the model is being released)."""
        self.remove()
        self._loaded = {}

    @property
    def hooked(self) -> int:
        return len(self._handles)


# --- finding files -----------------------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class HypernetworkInfo:
    filename: Path
    name: str  # file name without extension: what `<hypernet:NAME:...>` refers to
    mtime: float = 0.0
    _hash: str | None = field(default=None, repr=False)

    def sha256(self, cache=None) -> str:
        """The file's SHA-256 (kept in the hash cache when one is given)."""
        if self._hash is None:
            self._hash = cache.sha256(self.filename) if cache is not None else sha256_of(self.filename)
        return self._hash

    def shorthash(self, cache=None) -> str:
        """A1111's short hash of a hypernetwork: the first 10 hex digits of its SHA-256."""
        return self.sha256(cache)[:10]

    def known_hash(self, cache=None) -> str | None:
        if self._hash is None and cache is not None:
            self._hash = cache.cached_sha256(self.filename)
        return self._hash

    @property
    def preview(self) -> Path | None:
        return preview_beside(self.filename)


class HypernetworkRegistry:
    """`*.pt` files under models/hypernetworks (or --hypernetwork-dir), subfolders too, by name."""

    def __init__(self, folders: tuple[Path, ...], hashes=None):
        self.folders = tuple(folders)
        self.hashes = hashes
        self._lock = threading.Lock()
        self._items: list[HypernetworkInfo] = []
        self.refresh()

    def refresh(self) -> list[HypernetworkInfo]:
        known = {i.filename: i for i in self.list()}
        found: dict[Path, HypernetworkInfo] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() not in HYPERNETWORK_EXTENSIONS or not path.is_file() or path.stem == "None":
                    continue  # A1111 never lists a "None.pt": it would read as the setting's "None"
                resolved = path.resolve()
                mtime = path.stat().st_mtime
                old = known.get(resolved)
                found.setdefault(resolved, old if old is not None and old.mtime == mtime
                                 else HypernetworkInfo(resolved, path.stem, mtime))
        items = sorted(found.values(), key=lambda i: natural_key(i.name))
        with self._lock:
            self._items = items
        return list(items)

    def list(self) -> list[HypernetworkInfo]:
        with self._lock:
            return list(self._items)

    def find(self, name: str) -> HypernetworkInfo | None:
        return next((i for i in self.list() if i.name == name), None)

    def find_by_hash(self, short: str) -> HypernetworkInfo | None:
        """The file whose SHA-256 starts with `short`, among those whose hash is already known (no file is read)."""
        short = short.strip().lower()
        if not short:
            return None
        return next((i for i in self.list() if (i.known_hash(self.hashes) or "").startswith(short)), None)
