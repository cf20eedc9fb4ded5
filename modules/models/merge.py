"""The Checkpoint Merger: two or three checkpoints combined into a new file, as AUTOMATIC1111's tab does it.

Methods (M is the multiplier): "Weighted sum" A*(1-M) + B*M, "Add difference" A + (B-C)*M, "No interpolation"
(A alone: a format change, float16, a baked-in VAE or discarded weights). Only tensors whose name contains
`model` and that B has too are merged; the rest are A's. An inpainting (9-channel) or InstructPix2Pix (8-channel)
A merged with a normal B has only its first 4 input channels merged, and the file name says what it is.

Unlike A1111, which reads all three files into memory, the merge streams: the output's header is worked out from
the inputs' headers first, then each tensor is read from the inputs, combined in 32-bit floats and written before
the next is read, so a merge needs memory for a few tensors, not for the models. Differences from A1111 that are
deliberate: "Save as float16" narrows every 32-bit weight (A1111 skips the weights a merge leaves alone) but never
the top-level schedule buffers (`alphas_cumprod`, which 16 bits round); tensors only B has are not added; models of
different families are refused rather than failing on the first shape that differs; an existing file is kept
unless overwriting is asked for; the file appears only when complete (written beside it, then renamed).
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import struct
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Callable

import torch

from modules.models import checkpoint_file, families, ldm_export, vae_family
from modules.models.checkpoint_file import SAFETENSORS_DTYPES, CheckpointError, SafetensorsReader

METHODS = ("No interpolation", "Weighted sum", "Add difference")
CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")  # A1111's "Copy config from" choices, in its order
FORMATS = ("safetensors", "ckpt")
# Never merged (A1111's checkpoint_dict_skip_on_merge): CLIP's position ids are integers, A's are kept.
SKIP_ON_MERGE = frozenset({"cond_stage_model.transformer.text_model.embeddings.position_ids"})
DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
VAE_PREFIX = "first_stage_model."


class MergeError(Exception):
    """A merge that cannot be done, with what is wrong (nothing was written)."""


@dataclass(frozen=True)
class MergeInput:
    """One checkpoint taking part, as the checkpoint list knows it."""
    path: Path
    name: str  # its title without the hash: the path relative to its folder, with the extension
    model_name: str  # A1111's model_name (no extension, '/' as '_'): what default output names are made of
    sha256: str | None = None  # for the merge recipe
    legacy_hash: str | None = None


@dataclass(frozen=True)
class MergeRequest:
    """A1111's Checkpoint Merger fields, with its names and defaults."""
    primary: MergeInput
    secondary: MergeInput | None = None
    tertiary: MergeInput | None = None
    interp_method: str = "Weighted sum"
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: str = "A, B or C"
    bake_in_vae: Path | None = None  # a VAE file whose weights replace A's
    bake_in_vae_name: str = "None"
    discard_weights: str = ""  # a regular expression: matching tensor names are left out
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    overwrite: bool = False


@dataclass
class MergeOutcome:
    path: Path
    kind: str | None  # "inpainting", "instruct-pix2pix" or None
    tensors: int
    config_copied: Path | None = None
    warnings: list[str] = field(default_factory=list)


Progress = Callable[[int, int, str], None]  # (done, total, what): called as tensors are written


def check(request: MergeRequest) -> None:
    """Refuse a request that cannot work, before any file is opened."""
    method = request.interp_method
    if method not in METHODS:
        raise MergeError(f"Unknown interpolation method {method!r}; choose one of {', '.join(METHODS)}")
    if method != "No interpolation" and request.secondary is None:
        raise MergeError(f"{method} needs a secondary model (B)")
    if method == "Add difference" and request.tertiary is None:
        raise MergeError("Add difference needs a tertiary model (C)")
    if request.checkpoint_format not in FORMATS:
        raise MergeError(f"Unknown checkpoint format {request.checkpoint_format!r}: safetensors or ckpt")
    if request.config_source not in CONFIG_SOURCES:
        raise MergeError(f"Unknown config source {request.config_source!r}; choose one of {', '.join(CONFIG_SOURCES)}")
    if request.discard_weights:
        try:
            re.compile(request.discard_weights)
        except re.error as e:
            raise MergeError(f"Discard weights: {request.discard_weights!r} is not a valid regular expression "
                             f"({e})") from None
    output_stem(request, None)


def output_stem(request: MergeRequest, kind: str | None) -> str:
    """The new file's name without its extension: A1111's default from the models and M, or the custom name."""
    name = request.custom_name.strip()
    for ext in FORMATS:  # "my-merge.safetensors" means "my-merge"
        if name.lower().endswith("." + ext):
            name = name[:-len(ext) - 1]
    if name:
        if any(c in name for c in '/\\:*?"<>|\0') or name.startswith(".") or name != name.strip():
            raise MergeError(f"Custom name {request.custom_name!r}: use a plain file name (no folders, no "
                             "leading dot, none of / \\ : * ? \" < > |)")
    else:
        a, m = request.primary.model_name, request.multiplier
        if request.interp_method == "Weighted sum":
            name = f"{round(1 - m, 2)}({a}) + {round(m, 2)}({request.secondary.model_name})"
        elif request.interp_method == "Add difference":
            name = f"{a} + {round(m, 2)}({request.secondary.model_name} - {request.tertiary.model_name})"
        else:
            name = a
    return name + (f".{kind}" if kind else "")


class _Source:
    """One input file: its tensors' names, dtypes and shapes known up front, each tensor read when asked for.
    A .safetensors file is read tensor by tensor; a zip .ckpt is memory-mapped by the safe loader; an old-style
    pickle is read whole (its format allows nothing else)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if self.path.suffix.lower() == ".safetensors":
            self._reader = SafetensorsReader(self.path)
            self.metadata = dict(self._reader.metadata)
            self._tensors = None
            self.entries = {k: self._reader.entry(k) for k in self._reader.keys()}
        else:
            self._reader = None
            self.metadata = {}
            self._tensors = checkpoint_file.read_state_dict(self.path)
            self.entries = {k: (v.dtype, list(v.shape)) for k, v in self._tensors.items()}

    def get(self, key: str) -> torch.Tensor:
        return self._reader.read(key) if self._reader is not None else self._tensors[key]

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._tensors = None

    def family(self) -> families.ModelFamily | None:
        meta = {k: torch.empty(shape, dtype=dtype, device="meta") for k, (dtype, shape) in self.entries.items()}
        return families.family_of(meta, self.metadata)


@dataclass
class _Item:
    """One tensor of the output: what it will be (known before any data is read) and how to make it."""
    key: str
    dtype: torch.dtype
    shape: list[int]
    make: Callable[[], torch.Tensor]


def _narrowed(key: str, dtype: torch.dtype, half: bool) -> torch.dtype:
    # a module's 32-bit weight, not a top-level schedule buffer (no '.' in its name)
    return torch.float16 if half and dtype == torch.float32 and "." in key else dtype


def _combine(method: str, m: float, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    if method == "Weighted sum":
        return (1 - m) * a + m * b
    return a + m * (b - c) if c is not None else a


def _merged_item(key: str, sources: dict[str, _Source], request: MergeRequest) -> tuple[_Item, str | None]:
    """The output tensor for a key A and B both have: the formula, over A's first 4 input channels when A is an
    inpainting or InstructPix2Pix model and B is not. Returns the item and the kind of model that makes A."""
    a, b, c = sources["A"], sources["B"], sources.get("C")
    (a_dtype, shape), (b_dtype, b_shape) = a.entries[key], b.entries[key]
    with_c = c is not None and key in c.entries
    if with_c and c.entries[key][1] != b_shape:
        raise MergeError(f"{key}: B has shape {b_shape} and C {c.entries[key][1]}; they are not the same kind of "
                         "model")
    kind = None
    if shape != b_shape:
        if len(shape) < 2 or len(shape) != len(b_shape) or shape[:1] + shape[2:] != b_shape[:1] + b_shape[2:]:
            raise MergeError(f"{key}: A has shape {shape} and B {b_shape}; these models are not the same "
                             "architecture")
        if shape[1] == 4 and b_shape[1] in (8, 9):
            what = "an inpainting" if b_shape[1] == 9 else "an InstructPix2Pix"
            raise MergeError(f"When merging {what} model with a normal one, A must be the {what[3:]} model.")
        if shape[1] not in (8, 9) or b_shape[1] != 4:
            raise MergeError(f"Bad dimensions for merged layer {key}: A={shape}, B={b_shape}")
        kind = "inpainting" if shape[1] == 9 else "instruct-pix2pix"
    dtypes = [a_dtype, b_dtype] + ([c.entries[key][0]] if with_c else [])
    out_dtype = a_dtype if kind else reduce(torch.promote_types, dtypes)
    work = torch.promote_types(out_dtype, torch.float32)
    final = _narrowed(key, out_dtype, request.save_as_half)
    method, m = request.interp_method, float(request.multiplier)

    def make() -> torch.Tensor:
        ta, tb = a.get(key).to(work), b.get(key).to(work)
        tc = c.get(key).to(work) if with_c else None  # A1111: B - zeros where C lacks the key: A unchanged
        if kind:
            ta = ta.clone()
            ta[:, 0:4] = _combine(method, m, ta[:, 0:4], tb, tc)
            return ta.to(final)
        return _combine(method, m, ta, tb, tc).to(final)

    return _Item(key, final, list(shape), make), kind


def _vae_tensors(path: Path, name: str, a: _Source) -> dict[str, torch.Tensor]:
    """The VAE file's weights under A's names (first_stage_model.*), whatever layout the file uses."""
    try:
        sd = checkpoint_file.read_state_dict(path)
    except CheckpointError as e:
        raise MergeError(f"Bake in VAE: {e}") from None
    if any(k.startswith("encoder.down_blocks.") for k in sd):  # diffusers' layout
        levels = len({k.split(".")[2] for k in sd if k.startswith("encoder.down_blocks.")})
        try:
            sd = ldm_export.vae_to_ldm({k: v for k, v in sd.items() if not k.startswith("loss.")}, levels)
        except KeyError as e:
            raise MergeError(f"Bake in VAE: {name} has a weight this VAE layout does not have ({e})") from None
    else:
        sd = {(k if k.startswith(VAE_PREFIX) else VAE_PREFIX + k): v for k, v in sd.items()}
    found = {k: v for k, v in sd.items() if k in a.entries}
    if not found:
        raise MergeError(f"Bake in VAE: none of {name}'s weights match the primary model's VAE; is it a VAE?")
    for k, v in found.items():
        if list(v.shape) != a.entries[k][1]:
            raise MergeError(f"Bake in VAE: {name}'s {k} has shape {list(v.shape)}, the model's "
                             f"{a.entries[k][1]}; it does not fit this model")
    return found


def _plan(sources: dict[str, _Source], request: MergeRequest, vae: dict[str, torch.Tensor]
          ) -> tuple[list[_Item], str | None]:
    a, b = sources["A"], sources.get("B")
    discard = re.compile(request.discard_weights) if request.discard_weights else None
    merging = request.interp_method != "No interpolation"
    items, kind = [], None
    for key, (dtype, shape) in a.entries.items():
        if discard is not None and discard.search(key):
            continue
        if key in vae:
            tensor = vae[key]
            final = _narrowed(key, tensor.dtype, request.save_as_half)
            items.append(_Item(key, final, list(shape), lambda t=tensor, d=final: t.to(d)))
        elif merging and "model" in key and key in b.entries and key not in SKIP_ON_MERGE and dtype.is_floating_point:
            item, item_kind = _merged_item(key, sources, request)
            kind = kind or item_kind
            items.append(item)
        else:
            final = _narrowed(key, dtype, request.save_as_half)
            items.append(_Item(key, final, list(shape), lambda k=key, d=final: a.get(k).to(d)))
    if not items:
        raise MergeError(f"Discard weights {request.discard_weights!r} matches every weight: nothing would be saved")
    return items, kind


def _check_families(sources: dict[str, _Source]) -> families.ModelFamily:
    """The family every input shares (MergeError when one is of another family or of none)."""
    found = {}
    for role, source in sources.items():
        family = source.family()
        if family is None:
            raise MergeError(f"{role} ({source.path.name}) is not a Stable Diffusion checkpoint of a kind this app "
                             "knows (no U-Net or no text encoder weights)")
        found[role] = family
    first = found["A"]
    for role, family in found.items():
        if family.name != first.name:
            raise MergeError(f"Cannot merge models of different families: A ({sources['A'].path.name}) is "
                             f"{first.label}, {role} ({sources[role].path.name}) is {family.label}")
    return first


def _recipe_metadata(request: MergeRequest, sources: dict[str, _Source], kind: str | None) -> dict[str, str]:
    """A1111's safetensors metadata for a merged file: the inputs' own (when copied), `format`, and the
    `sd_merge_recipe` / `sd_merge_models` JSON that says how the file was made."""
    if not request.save_metadata:
        return {}
    metadata: dict[str, str] = {}
    if request.copy_metadata_fields:
        for role in ("A", "B", "C"):
            if role in sources:
                metadata.update({str(k): str(v) for k, v in sources[role].metadata.items()})
    metadata["format"] = "pt"
    if not request.add_merge_recipe:
        return metadata
    inputs = {"A": request.primary, "B": request.secondary, "C": request.tertiary}
    recipe = {
        "type": "webui",
        "primary_model_hash": request.primary.sha256,
        "secondary_model_hash": request.secondary.sha256 if "B" in sources else None,
        "tertiary_model_hash": request.tertiary.sha256 if "C" in sources else None,
        "interp_method": request.interp_method, "multiplier": request.multiplier,
        "save_as_half": request.save_as_half, "custom_name": request.custom_name,
        "config_source": CONFIG_SOURCES.index(request.config_source), "bake_in_vae": request.bake_in_vae_name,
        "discard_weights": request.discard_weights,
        "is_inpainting": kind == "inpainting", "is_instruct_pix2pix": kind == "instruct-pix2pix",
    }
    models: dict = {}
    for role, source in sources.items():
        info = inputs[role]
        models[info.sha256] = {"name": info.name, "legacy_hash": info.legacy_hash,
                               "sd_merge_recipe": _json_or_none(source.metadata.get("sd_merge_recipe"))}
        nested = _json_or_none(source.metadata.get("sd_merge_models"))
        if isinstance(nested, dict):
            models.update(nested)
    metadata["sd_merge_recipe"] = json.dumps(recipe)
    metadata["sd_merge_models"] = json.dumps(models)
    return metadata


def _json_or_none(text):
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _config_to_copy(request: MergeRequest) -> Path | None:
    """The YAML beside A, B or C that the new file takes ("Copy config from")."""
    choice = request.config_source
    roles = {"A, B or C": (request.primary, request.secondary, request.tertiary), "B": (request.secondary,),
             "C": (request.tertiary,)}.get(choice, ())
    for info in roles:
        if info is not None and info.path.with_suffix(".yaml").is_file():
            return info.path.with_suffix(".yaml")
    return None


def write_safetensors(path: Path, items: list[_Item], metadata: dict[str, str], progress: Progress,
                      check: Callable[[], None]) -> None:
    """A .safetensors file written one tensor at a time: the header from the items' dtypes and shapes first."""
    header: dict = {}
    offset = 0
    for item in items:
        n = int(torch.Size(item.shape).numel()) * item.dtype.itemsize
        header[item.key] = {"dtype": DTYPE_NAMES[item.dtype], "shape": item.shape, "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the tensors' data starts 8-byte aligned, as the safetensors library writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for done, item in enumerate(items, 1):
            check()
            tensor = item.make()
            if tensor.dtype != item.dtype or list(tensor.shape) != item.shape:
                raise MergeError(f"internal error: {item.key} came out {tensor.dtype} {list(tensor.shape)}, "
                                 f"planned {item.dtype} {item.shape}")
            f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
            progress(done, len(items), item.key)
        f.flush()
        os.fsync(f.fileno())


def _safetensors_to_ckpt(src: Path, dst: Path) -> None:
    """A .ckpt (a pickled {name: tensor} dict, as A1111's merger writes it) from a .safetensors file, its tensors
    memory-mapped so the file's pages are read as the pickle is written rather than held in memory."""
    with SafetensorsReader(src) as reader, open(src, "rb") as f, \
            mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
        (n,) = struct.unpack("<Q", mapped[:8])
        tensors = {}
        for key in reader.keys():
            dtype, shape = reader.entry(key)
            begin, end = reader.header[key]["data_offsets"]
            if end == begin:
                tensors[key] = torch.empty(shape, dtype=dtype)
            else:
                tensors[key] = torch.frombuffer(mapped, dtype=torch.uint8, count=end - begin,
                                                offset=8 + n + begin).view(dtype).reshape(shape)
        torch.save(tensors, dst)
        del tensors


def merge(request: MergeRequest, out_dir: Path, progress: Progress = lambda *_: None,
          check_interrupt: Callable[[], None] = lambda: None) -> MergeOutcome:
    """Merge as `request` says into `out_dir`; the new file appears only once complete. MergeError says why not."""
    check(request)
    with ExitStack() as stack:
        sources: dict[str, _Source] = {}
        roles = {"A": request.primary}
        if request.interp_method != "No interpolation":
            roles["B"] = request.secondary
        if request.interp_method == "Add difference":
            roles["C"] = request.tertiary
        for role, info in roles.items():
            try:
                sources[role] = _Source(info.path)
            except CheckpointError as e:
                raise MergeError(f"{role}: {e}") from None
            stack.callback(sources[role].close)
        family = _check_families(sources)
        warnings = []
        vae = {}
        if request.bake_in_vae is not None:
            vae = _vae_tensors(request.bake_in_vae, request.bake_in_vae_name, sources["A"])
            note = vae_family.mismatch(request.bake_in_vae, request.bake_in_vae_name, family.vae_kind, family.label)
            warnings += [note] if note else []
        items, kind = _plan(sources, request, vae)
        target = Path(out_dir) / f"{output_stem(request, kind)}.{request.checkpoint_format}"
        config = _config_to_copy(request)
        config_target = target.with_suffix(".yaml") if config is not None else None
        for path in (target, config_target):
            if path is not None and path.exists() and not request.overwrite:
                raise MergeError(f"{path.name} already exists in {path.parent}; choose another name or allow "
                                 "overwriting")
        _write(target, items, _recipe_metadata(request, sources, kind), progress, check_interrupt)
    if config is not None:
        shutil.copyfile(config, config_target)
    return MergeOutcome(target, kind, len(items), config_target, warnings)


def _write(target: Path, items: list[_Item], metadata: dict[str, str], progress: Progress,
           check_interrupt: Callable[[], None]) -> None:
    """Write beside the target and rename: a failed or interrupted merge leaves no partial model behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    staged = partial.with_name(partial.name + "-tensors") if target.suffix == ".ckpt" else partial
    try:
        write_safetensors(staged, items, metadata, progress, check_interrupt)
        if staged != partial:
            _safetensors_to_ckpt(staged, partial)
        os.replace(partial, target)
    finally:
        for leftover in {staged, partial}:
            leftover.unlink(missing_ok=True)
