"""Reading weight files safely.

`.safetensors` files hold only tensors and are read with plain reads. `.ckpt`/`.pt` files are Python
pickles, which can run arbitrary code when loaded the ordinary way; they are read only with
`torch.load(weights_only=True)`, which builds tensors and plain containers and refuses every other
global. The few extra globals real Stable Diffusion checkpoints carry (PyTorch Lightning's
checkpoint-callback metadata, numpy scalars) are admitted as inert stand-ins: no code from the file
runs, its metadata is simply dropped.
"""

from __future__ import annotations

import _compat_pickle
import json
import os
import pickle
import pickletools
import re
import struct
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointError(Exception):
    """A weight file that cannot be used, with a message meant for the user."""


class NotEnoughMemory(CheckpointError):
    """A checkpoint whose weights do not fit in the memory this machine has free, refused before it is read (the
    API answers 507, as for running out of memory)."""
    status_code = 507


# The most bytes a pickle in a weight file may take (its index of tensors: a few hundred KB for SDXL, a few
# MB with optimizer state). A zip member expands to any size its header declares, so a 1 MB file can ask
# for gigabytes: members are read with this budget, and a larger one is refused before it is read.
PICKLE_LIMIT = 64 << 20


class PickleTooLarge(CheckpointError):
    """A pickle or a compressed zip member larger than PICKLE_LIMIT, or a member larger than its file."""


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n < 1 << 30 else f"{n / (1 << 30):.1f} GiB"


class _Budgeted:
    """A read-only stream for pickletools that raises PickleTooLarge instead of reading past `budget` bytes
    (pickletools reads an opcode's whole argument at once, whatever length the pickle claims)."""

    def __init__(self, f, budget: int, name: str):
        self.f, self.left, self.name, self.pos = f, budget, name, 0

    def _take(self, n: int) -> None:
        if n > self.left:
            raise PickleTooLarge(f"{self.name} is larger than the {_mib(PICKLE_LIMIT)} a checkpoint's pickle may "
                                 "take")

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.left + 1
        self._take(n)
        data = self.f.read(n)
        self.left -= len(data)
        self.pos += len(data)
        return data

    def readline(self) -> bytes:
        line = self.f.readline(self.left + 1)
        self._take(len(line))
        self.left -= len(line)
        self.pos += len(line)
        return line

    def tell(self) -> int:
        return self.pos


def check_archive(path: Path) -> None:
    """Refuse (PickleTooLarge) a zip checkpoint with a compressed member that would expand past PICKLE_LIMIT,
    or a member that declares more bytes than the whole file holds, from the sizes its directory declares and
    before anything is decompressed. torch.save stores members uncompressed (and this loader memory-maps
    them), so only a member made to be small on disk and huge in memory, a zip bomb, is refused; reading
    expands a member to its declared size at most."""
    size = path.stat().st_size
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            stored = info.compress_type == zipfile.ZIP_STORED
            if stored and info.file_size > size:
                raise PickleTooLarge(
                    f"Refused to load {path.name}: its member {info.filename!r} declares {_mib(info.file_size)}, "
                    f"more than the whole file ({_mib(size)}); it is corrupt or made to exhaust memory. Nothing in "
                    "it was read or run.")
            if not stored and info.file_size > PICKLE_LIMIT:
                raise PickleTooLarge(
                    f"Refused to load {path.name}: its compressed member {info.filename!r} would expand to "
                    f"{_mib(info.file_size)} (from {_mib(info.compress_size)} in the file), more than the "
                    f"{_mib(PICKLE_LIMIT)} a compressed part of a checkpoint may take; a file made to exhaust "
                    "memory (a zip bomb) looks like this. Nothing in it was read or run.")


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


def _python3_name(module: str, name: str, proto: int) -> str:
    """The "module.name" Python 3 imports for a GLOBAL of a protocol 0-2 pickle, which may use Python 2's
    names (`__builtin__ eval` is `builtins.eval`), as pickle's Unpickler (and torch's) maps them."""
    if proto < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


_MEMO_OPS = ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT")
_GET_OPS = ("GET", "BINGET", "LONG_BINGET")


def _stream_globals(stream: _Budgeted, found: list[str], strict: bool) -> None:
    """Append the globals of the pickles in `stream` (one after another, as the legacy torch format has them).
    STACK_GLOBAL takes its module and name from the two strings pushed just before it, directly or from the
    memo (protocol 4 memoizes a module's name and fetches it again for its next global). A pickle over the
    budget raises PickleTooLarge when `strict`; otherwise the scan stops there."""
    while True:
        strings: list[str] = []  # the strings pushed since the last other push or pop, at most the last two
        memo: dict[int, str] = {}
        memoized, proto = 0, 0
        try:
            for op, arg, _pos in pickletools.genops(stream):
                name = op.name
                if name == "PROTO":
                    proto = arg
                elif name in _MEMO_OPS:  # memoize the top of the stack, which these leave in place
                    index = memoized if name == "MEMOIZE" else int(arg)
                    memoized += name == "MEMOIZE"
                    if strings:
                        memo[index] = strings[-1]
                    else:
                        memo.pop(index, None)
                elif name == "FRAME":
                    pass
                elif name == "GLOBAL":
                    module, _, attr = str(arg).partition(" ")
                    found.append(_python3_name(module, attr, proto))
                    strings = []
                elif name == "STACK_GLOBAL":
                    if len(strings) == 2:
                        found.append(f"{strings[0]}.{strings[1]}")
                    strings = []
                elif isinstance(arg, str) and "UNICODE" in name:
                    strings = [*strings[-1:], arg]
                elif name in _GET_OPS and int(arg) in memo:
                    strings = [*strings[-1:], memo[int(arg)]]
                else:
                    strings = []
        except PickleTooLarge:
            if strict:
                raise
            return
        except Exception:  # the end (genops raises there), raw tensor bytes (legacy format), or a broken pickle
            return


def pickle_globals(path: Path) -> list[str]:
    """The globals ("module.name", as Python 3 names them) a pickle-based file would import, found by parsing
    its opcodes (pickletools only reads them; nothing is executed). Reads at most PICKLE_LIMIT bytes of a
    pickle: a zip member over it raises PickleTooLarge; a legacy file's scan stops there."""
    path = Path(path)
    found: list[str] = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith(".pkl"):
                    with zf.open(info) as f:
                        _stream_globals(_Budgeted(f, PICKLE_LIMIT, f"its pickle {info.filename!r}"), found, True)
    else:
        with open(path, "rb") as f:
            _stream_globals(_Budgeted(f, PICKLE_LIMIT, path.name), found, False)
    return found


def _describe_unpickling_error(path: Path, err: Exception) -> str:
    """The refusal, naming the callable the file asks for as Python 3 names it ('builtins.eval', where torch's
    message may say only 'eval' and the pickle itself Python 2's '__builtin__ eval')."""
    m = re.search(r"GLOBAL ([\w.]+)", str(err))
    named = m.group(1) if m else None
    try:
        found = pickle_globals(path)
    except PickleTooLarge as e:
        return f"Refused to load {path.name}: {e}. Nothing in it was run."
    except (OSError, zipfile.BadZipFile):
        found = []
    if named:
        offender = next((g for g in found if g == named or g.endswith("." + named)), named)
    else:
        offender = next((g for g in found if not g.startswith(_HARMLESS_GLOBAL_PREFIXES)), None)
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
    if is_zip:
        try:
            check_archive(path)
        except (OSError, zipfile.BadZipFile):
            pass  # torch.load below says what is wrong with it
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


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class SafetensorsReader:
    """A .safetensors file read one tensor at a time with plain positional reads (the format: an 8-byte header
    length, a JSON header of dtype / shape / data_offsets, then the data). Not memory-mapped: the pages of a
    mapped file count in the process's resident memory until it is closed, and a mapped file cut short while in
    use (overwritten by a download) kills the process with SIGBUS, where a read only comes back short. `read` may
    be called from several threads at once. Use as a context manager."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.header, self.metadata = read_safetensors_header(self.path)
        self._file = open(self.path, "rb")
        (n,) = struct.unpack("<Q", self._file.read(8))
        self._start = 8 + n
        self._seek_lock = threading.Lock()  # where os.preadv is missing (Windows): seek and read as one
        self._buffers = threading.local()  # each thread's bytes read before a conversion, reused

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()
        self._buffers = threading.local()

    def keys(self) -> list[str]:
        """The tensor names in the order their data lies in the file (reading them so is sequential)."""
        return [name for name, _ in sorted(self.header.items(), key=lambda item: item[1]["data_offsets"][0])]

    def entry(self, name: str) -> tuple[torch.dtype, list[int]]:
        """(dtype, shape) of tensor `name`, from the header alone; CheckpointError if the entry is malformed."""
        entry = self.header[name]
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{self.path.name} is not a valid .safetensors file (tensor {name!r}: "
                                  f"{entry!r})") from None
        nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(f"{self.path.name} is not a valid .safetensors file (tensor {name!r} "
                                  f"has {end - begin} bytes for shape {shape} {entry['dtype']})")
        return dtype, shape

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor `name`, in new memory of its own; `dtype`: converted to it on the way, through a buffer the
        calling thread reuses, so the converted copy is the only new memory."""
        stored, shape = self.entry(name)
        begin, end = (int(o) for o in self.header[name]["data_offsets"])
        if dtype is None or dtype == stored:
            out = torch.empty(shape, dtype=stored)
            self._read_at(begin, out.reshape(-1).view(torch.uint8), name)
            return out
        raw = self._buffer(end - begin)
        self._read_at(begin, raw, name)
        return raw.view(stored).reshape(shape).to(dtype)

    def _buffer(self, nbytes: int) -> torch.Tensor:
        buffer = getattr(self._buffers, "bytes", None)
        if buffer is None or buffer.numel() < nbytes:
            buffer = self._buffers.bytes = torch.empty(nbytes, dtype=torch.uint8)
        return buffer[:nbytes]

    def _read_at(self, begin: int, raw: torch.Tensor, name: str) -> None:
        """Fill `raw` (uint8) with the file's bytes from data offset `begin`."""
        view, done, offset = memoryview(raw.numpy()), 0, self._start + begin
        while done < len(view):  # a single read stops short of 2 GiB on Linux
            got = self._pread(view[done:], offset + done)
            if got <= 0:
                raise CheckpointError(f"{self.path.name} is truncated (tensor {name!r})")
            done += got

    def _pread(self, view: memoryview, offset: int) -> int:
        if hasattr(os, "preadv"):
            return os.preadv(self._file.fileno(), [view], offset)
        with self._seek_lock:
            self._file.seek(offset)
            return self._file.readinto(view)


# Tensors of a checkpoint read at once (see _read_safetensors).
READ_THREADS = max(1, min(4, os.cpu_count() or 1))


def _cast_to(name: str, stored: torch.dtype, cast: torch.dtype | None, keep: tuple[str, ...]) -> torch.dtype | None:
    """The type tensor `name`, stored as `stored`, is read in (see _read_safetensors), or None for its own."""
    if cast is None or not stored.is_floating_point or stored == cast:
        return None
    if "." not in name and cast.itemsize < stored.itemsize:
        return None  # narrowed only if a module's weight, not a top-level buffer such as alphas_cumprod
    if stored.itemsize == 2 and name.startswith(keep):
        return None
    return cast


def _read_safetensors(path: Path, cast: torch.dtype | None = None, keep: tuple[str, ...] = ()) -> dict:
    """All tensors of a .safetensors file (see SafetensorsReader). `cast`: floating-point tensors are converted
    to it as they are read, so the file's 16-bit copy of a model never sits beside its 32-bit copy; a cast to a
    narrower type leaves the top-level buffers (the noise schedule's `alphas_cumprod`) at the file's
    precision, which it would round. `keep`: names starting with these keep the file's type when it is 16 bits
    (the text encoders' weights, which the model keeps in it: see low_memory.file_storage).
    READ_THREADS threads read at once: most of a load from the page cache is the kernel's copy and the page
    faults of the new memory, one core each (measured: a warm 2.1 GB fp16 SD 1.5 file read as fp32 in 1.2 s
    with two threads against 1.5-2.1 s with one, a 4.3 GB fp32 file in 1.2 s against 2.2-2.3 s)."""
    with SafetensorsReader(path) as reader:
        def one(name: str) -> tuple[str, torch.Tensor]:
            return name, reader.read(name, _cast_to(name, reader.entry(name)[0], cast, keep))

        pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="read-weights")
        try:
            return dict(pool.map(one, reader.keys()))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # after an error, no read is left running


def read_size(path: Path, cast: torch.dtype | None = None, keep: tuple[str, ...] = ()) -> tuple[int, int]:
    """(least, most) bytes the tensors of read_state_dict(path, cast, keep) will take, without reading them: both
    the same, from a .safetensors header; for a pickle, whose tensor types show only once it is read, its file
    size, and twice that when `cast` is wider than 16 bits (an fp16 file widened)."""
    path = Path(path)
    size = path.stat().st_size
    if path.suffix.lower() != ".safetensors":
        return size, size * 2 if cast is not None and cast.itemsize > 2 else size
    header, _ = read_safetensors_header(path)
    total = 0
    try:
        for name, entry in header.items():
            stored = SAFETENSORS_DTYPES[entry["dtype"]]
            numel = int(np.prod([int(d) for d in entry["shape"]], dtype=np.int64))
            total += numel * (_cast_to(name, stored, cast, keep) or stored).itemsize
    except (KeyError, TypeError, ValueError):
        return size, size  # a malformed entry: the read itself says which
    return total, total


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


def read_state_dict(path: Path, cast: torch.dtype | None = None, keep: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """All tensors in a weight file, as a flat {name: tensor} dict on the CPU; `cast`: a .safetensors file's
    floating-point tensors converted to that dtype as they are read, except 16-bit ones named with a prefix in
    `keep` (see _read_safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    ext = path.suffix.lower()
    if ext == ".safetensors":
        sd = _read_safetensors(path, cast, keep)
    elif ext in PICKLE_EXTENSIONS:
        sd = _read_pickle(path)
    else:
        raise CheckpointError(f"{path.name}: unsupported file type {ext!r} (use .safetensors or .ckpt)")
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path.name} does not contain a state dict (found {type(sd).__name__})")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
