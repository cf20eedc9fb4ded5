"""Reading weight files safely.

`.safetensors` files hold only tensors and are memory-mapped. `.ckpt`/`.pt` files are Python
pickles, which can run arbitrary code when loaded the ordinary way; they are read only with
`torch.load(weights_only=True)`, which builds tensors and plain containers and refuses every other
global. The few extra globals real Stable Diffusion checkpoints carry (PyTorch Lightning's
checkpoint-callback metadata, numpy scalars) are admitted as inert stand-ins: no code from the file
runs, its metadata is simply dropped.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointError(Exception):
    """A weight file that cannot be used, with a message meant for the user."""


class _InertMetadata:
    """Stands in for metadata objects in a checkpoint (e.g. Lightning's ModelCheckpoint).

    The weights_only unpickler creates it with __new__ and hands it the pickled attributes; nothing
    of the original class is imported or run.
    """

    def __setstate__(self, state):
        self.state = state


class ParameterDictData:
    """Stands in for a pickled `torch.nn.ParameterDict` (the original textual-inversion code saved its
    vectors in one): only the tensors are kept, no module is built."""

    def __setstate__(self, state):
        self.parameters = dict(state.get("_parameters") or {}) if isinstance(state, dict) else {}


def _numpy_globals() -> list:
    core = np._core.multiarray  # numpy 2 name; pickles from numpy 1 name it numpy.core.multiarray
    found = [np.dtype, np.ndarray]
    for name in ("scalar", "_reconstruct"):
        fn = getattr(core, name)
        found += [fn, (fn, f"numpy.core.multiarray.{name}")]
    for dt in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType",
               "UInt8DType"):
        if hasattr(np.dtypes, dt):
            found.append(getattr(np.dtypes, dt))
    return found


SAFE_EXTRA_GLOBALS = [
    (_InertMetadata, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
    (_InertMetadata, "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint"),
    (ParameterDictData, "torch.nn.modules.container.ParameterDict"),
    *_numpy_globals(),
]


_HARMLESS_GLOBAL_PREFIXES = ("torch.", "collections.OrderedDict", "numpy.", "_codecs.encode", "builtins.set",
                             "__builtin__.set", "pytorch_lightning.callbacks.model_checkpoint.",
                             "lightning.pytorch.callbacks.model_checkpoint.")


def pickle_globals(path: Path) -> list[str]:
    """The globals ("module.name") a pickle-based file would import, found by parsing its opcodes
    (pickletools only reads them; nothing is executed)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            streams = [zf.read(n) for n in zf.namelist() if n.endswith(".pkl")]
    else:
        streams = [path.read_bytes()]
    found: list[str] = []
    for data in streams:
        buf = io.BytesIO(data)
        while buf.tell() < len(data):  # the legacy torch format is several pickles in a row
            strings: list[str] = []
            try:
                for op, arg, _pos in pickletools.genops(buf):
                    if op.name == "GLOBAL":
                        found.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str) and "UNICODE" in op.name:
                        strings.append(arg)
            except Exception:
                break  # raw tensor bytes follow the pickles in the legacy format
    return found


def _describe_unpickling_error(path: Path, err: Exception) -> str:
    m = re.search(r"GLOBAL ([\w.]+)", str(err))
    offender = m.group(1) if m else None
    if offender is None:
        try:
            offender = next((g for g in pickle_globals(path) if not g.startswith(_HARMLESS_GLOBAL_PREFIXES)), None)
        except (OSError, zipfile.BadZipFile):
            offender = None
    if offender:
        return (f"Refused to load {path.name}: the file asks to import '{offender}' while loading, which a "
                "weights file never needs. Pickle-based checkpoints can run code; this one was not run. "
                "If you trust its source, convert it to .safetensors with a trusted tool, or get a "
                ".safetensors version.")
    return (f"Refused to load {path.name}: it is a pickle the safe loader cannot read "
            f"({str(err).splitlines()[-1] if str(err) else err.__class__.__name__}). Nothing in it was run. "
            "Use a .safetensors version of this model.")


def _read_pickle(path: Path) -> dict:
    is_zip = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(SAFE_EXTRA_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        raise CheckpointError(_describe_unpickling_error(path, e)) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"{path.name} could not be read: it looks truncated or corrupt "
            f"({str(e).splitlines()[0] if str(e) else e.__class__.__name__}). Download it again.") from None


def read_safetensors_header(path: Path) -> tuple[dict, dict]:
    """(tensor entries, metadata) from a .safetensors header, without reading any tensor data."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path.name} is empty or truncated (only {size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > min(size - 8, 100 << 20):
            raise CheckpointError(f"{path.name} is not a valid .safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path.name} is not a valid .safetensors file (unreadable header)") from None
    metadata = header.pop("__metadata__", None) or {}
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path.name} is truncated: its header describes {8 + n + end} bytes but the file has {size}. "
            "Download it again.")
    return header, metadata


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    read_safetensors_header(path)  # clear errors for truncated files before the library's own
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error type for malformed files
        raise CheckpointError(f"{path.name} could not be read as .safetensors ({e})") from None


def read_metadata(path: Path) -> dict:
    """The free-form metadata of a .safetensors file ({} for other formats)."""
    if path.suffix.lower() != ".safetensors":
        return {}
    return read_safetensors_header(path)[1]


def read_object(path: Path):
    """What a pickle-based file (.pt/.bin/.ckpt) holds, read with the safe loader: plain containers,
    numbers, strings and tensors (an A1111 embedding file, for example). Refuses anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    return _read_pickle(path)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors in a weight file, as a flat {name: tensor} dict on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    ext = path.suffix.lower()
    if ext == ".safetensors":
        sd = _read_safetensors(path)
    elif ext in PICKLE_EXTENSIONS:
        sd = _read_pickle(path)
    else:
        raise CheckpointError(f"{path.name}: unsupported file type {ext!r} (use .safetensors or .ckpt)")
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path.name} does not contain a state dict (found {type(sd).__name__})")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
