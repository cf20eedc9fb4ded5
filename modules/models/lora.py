"""LoRA and LyCORIS networks: find the files, read their layouts, patch a loaded model's weights.

A network file holds low-rank (or otherwise factored) weight changes for some Linear/Conv2d layers of
the U-Net and the text encoder. We merge them into the weights: for each touched layer the change
`delta` is computed once, the layer's original weight is copied aside (on the CPU) and
`weight + multiplier * delta` is written in its place. Removing networks copies the originals back,
so the base weights are bit-identical afterwards, and nothing is ever reloaded from disk.

Layouts read (key names are matched to our diffusers/transformers modules):
- kohya-ss / A1111: `lora_unet_<module>` and `lora_te_<module>` with `.lora_down.weight`,
  `.lora_up.weight`, optional `.lora_mid.weight` (LoCon's Tucker core) and `.alpha`. `<module>` is the
  module path with `.` written `_`, in diffusers naming (`down_blocks_0_attentions_0_...`) or in the
  original LDM naming (`input_blocks_1_1_...`, SDXL's `label_emb_0_0` and deeper transformer stacks too).
  SDXL files name its two text encoders `lora_te1_` (CLIP-L) and `lora_te2_` (OpenCLIP bigG).
- LyCORIS LoHa (`hada_w1_a`, `hada_w1_b`, `hada_w2_a`, `hada_w2_b`), LoKr (`lokr_w1[_a/_b]`,
  `lokr_w2[_a/_b]`) and full differences (`diff`, `diff_b`) under the same names.
- diffusers / PEFT: `unet.<module>` and `text_encoder.<module>` (SDXL: CLIP-L; `text_encoder_2.`: bigG) with
  `.lora_A.weight`/`.lora_B.weight`
  (PEFT; alpha from the `lora_adapter_metadata` diffusers writes, with `alpha_pattern` and rsLoRA),
  `.lora.down.weight`/`.lora.up.weight`, `.lora_linear_layer.down/up.weight`, or the older
  attention-processor names (`attn1.processor.to_q_lora.down.weight`).

The scale of a factored change is `alpha / rank` when the file gives alpha, else 1 (as A1111 does). The
text-encoder multiplier applies to every text encoder. A network made for another model family (see
`Network.other_family`) is skipped whole, with a note.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modules.hashing import BLOCK
from modules.models import checkpoint_file, ldm_export, low_memory
from modules.models.previews import preview_beside
from modules.models.registry import natural_key

log = logging.getLogger(__name__)

LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")

# `module.part` where part is one of these (longest alternatives are tried first by the lazy module).
_PARTS = ("lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "lora_A.weight", "lora_B.weight",
          "lora.down.weight", "lora.up.weight", "lora_linear_layer.down.weight", "lora_linear_layer.up.weight",
          "down.weight", "up.weight", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
          "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "diff", "diff_b",
          "dora_scale", "lora_magnitude_vector", "on_input", "oft_blocks", "oft_diag", "w_norm", "b_norm")
_KEY = re.compile(r"^(?P<module>.+?)\.(?P<part>" + "|".join(re.escape(p) for p in _PARTS) + r")$")
_CANONICAL = {"lora_A.weight": "down", "lora_B.weight": "up", "lora.down.weight": "down", "lora.up.weight": "up",
              "lora_linear_layer.down.weight": "down", "lora_linear_layer.up.weight": "up",
              "down.weight": "down", "up.weight": "up", "lora_down.weight": "down", "lora_up.weight": "up",
              "lora_mid.weight": "mid"}
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora$")  # old diffusers U-Net names
_TE_PROCESSOR = re.compile(r"\.self_attn\.to_(q|k|v|out)_lora$")  # old diffusers text-encoder names


class NetworkError(Exception):
    """A network file that cannot be used, with a message for the user."""


# --- finding files -------------------------------------------------------------------------------

def addnet_hash(path: Path) -> str:
    """kohya's "addnet" hash that A1111 shows for LoRA: SHA-256 of a .safetensors file without its
    8-byte length and JSON header (so editing the metadata does not change it); other files whole."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if path.suffix.lower() == ".safetensors":
            (n,) = struct.unpack("<Q", f.read(8))
            f.seek(8 + n)
        while chunk := f.read(BLOCK):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class LoraInfo:
    filename: Path
    name: str  # file name without extension: what `<lora:NAME:...>` refers to
    metadata: dict = field(default_factory=dict)
    mtime: float = 0.0
    _hash: str | None = field(default=None, repr=False)

    def metadata_for_api(self) -> dict:
        """The metadata as A1111's /loras shows it: values that hold JSON objects (kohya's
        `ss_tag_frequency`, `ss_dataset_dirs`, ...) parsed, the rest as written."""
        out = {}
        for key, value in self.metadata.items():
            if isinstance(value, str) and value.startswith("{"):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            out[key] = value
        return out

    @property
    def alias(self) -> str:
        """A1111's alias: the training output name kohya writes into the metadata, else the name."""
        return str(self.metadata.get("ss_output_name") or self.name)

    @property
    def sd_version(self) -> str:
        """The model version the file says it was trained for, as A1111 reads it from kohya's metadata: "SDXL"
        (ss_base_model_version sdxl_...), "SD2" (ss_v2), "SD1" (any other metadata) or "Unknown" (none)."""
        if str(self.metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
            return "SDXL"
        if str(self.metadata.get("ss_v2", "")) == "True":
            return "SD2"
        return "SD1" if self.metadata else "Unknown"

    def sha256(self, cache=None) -> str:
        """The hash A1111 shows: `sshs_model_hash` from the metadata if present, else the addnet hash
        (kept in the hash cache when one is given)."""
        if self._hash is None:
            given = self.metadata.get("sshs_model_hash")
            if isinstance(given, str) and given:
                self._hash = given
            elif cache is not None:
                self._hash = cache.sha256(self.filename, "addnet", addnet_hash)
            else:
                self._hash = addnet_hash(self.filename)
        return self._hash

    def shorthash(self, cache=None) -> str:
        return self.sha256(cache)[:12]

    def known_hash(self, cache=None) -> str | None:
        """The hash if it is known without reading the file (metadata, memory or the hash cache)."""
        given = self.metadata.get("sshs_model_hash")
        if self._hash is None and isinstance(given, str) and given:
            self._hash = given
        if self._hash is None and cache is not None:
            self._hash = cache.cached_sha256(self.filename, "addnet")
        return self._hash

    @property
    def preview(self) -> Path | None:
        """The card image beside the file (NAME.png, NAME.preview.png, ...), if any."""
        return preview_beside(self.filename)


# A1111's networks.list_available_networks starts its forbidden aliases with these two
FORBIDDEN_ALIASES = ("none", "Addams")


class LoraRegistry:
    """Network files in models/Lora (and models/LyCORIS, and --lora-dir), by name."""

    def __init__(self, folders: tuple[Path, ...], hashes=None):
        self.folders = tuple(folders)
        self.hashes = hashes  # a HashCache for the addnet hashes, or None
        self._lock = threading.Lock()
        self._items: list[LoraInfo] = []
        self.refresh()

    def refresh(self) -> list[LoraInfo]:
        known = {i.filename: i for i in self._items}
        found: dict[Path, LoraInfo] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() not in LORA_EXTENSIONS or not path.is_file():
                    continue
                resolved = path.resolve()
                if resolved in found:
                    continue
                mtime = path.stat().st_mtime
                old = known.get(resolved)
                if old is not None and old.mtime == mtime:
                    found[resolved] = old
                    continue
                try:
                    metadata = checkpoint_file.read_metadata(path)
                except checkpoint_file.CheckpointError as e:
                    log.warning("Skipping LoRA %s: %s", path.name, e)
                    continue
                found[resolved] = LoraInfo(resolved, path.stem, metadata, mtime)
        items = sorted(found.values(), key=lambda i: natural_key(i.name))
        with self._lock:
            self._items = items
        return list(items)

    def list(self) -> list[LoraInfo]:
        with self._lock:
            return list(self._items)

    def prompt_aliases(self) -> dict[Path, str]:
        """{file: the name A1111's card puts in its tag when `lora_preferred_name` is "Alias from file"}: the alias,
        unless A1111 forbids it: "none" (and "Addams", compared with the alias lowered as A1111 does, so never), or
        an alias that an earlier file in the list already had as its name or alias (then for every file that has
        it). A forbidden alias gives the file name."""
        items = self.list()
        forbidden, seen = set(FORBIDDEN_ALIASES), set()
        for info in items:
            if info.alias in seen:
                forbidden.add(info.alias.lower())
            seen.update((info.name, info.alias))
        return {info.filename: info.name if info.alias.lower() in forbidden else info.alias for info in items}

    def rename_by_hash(self, prompt: str, lora_hashes: str | None) -> str:
        """A pasted infotext's `<lora:NAME:` tags renamed to the files here that have the hashes its
        `Lora hashes` gives (A1111 does this on paste, so a LoRA saved under another name still
        applies). Only hashes already known are used: no file is read."""
        if not lora_hashes:
            return prompt
        wanted = {}
        for item in lora_hashes.split(","):
            name, _, short = item.partition(":")
            if short.strip():
                wanted[name.strip()] = short.strip().lower()
        by_hash = {}
        for info in self.list():
            known = info.known_hash(self.hashes)
            if known:
                by_hash.setdefault(known[:12].lower(), info)

        def rename(m: re.Match) -> str:
            found = by_hash.get(wanted.get(m[1].strip(), ""))
            return f"<lora:{found.name}:" if found is not None and self.find(m[1]) is not found else m[0]

        return re.sub(r"<lora:([^:>]+):", rename, prompt)

    def find(self, name: str) -> LoraInfo | None:
        """By file name (without extension), then by alias, as A1111 resolves `<lora:NAME>`."""
        items = self.list()
        for attr in ("name", "alias"):
            for info in items:
                if getattr(info, attr) == name:
                    return info
        return None


# --- reading layouts -----------------------------------------------------------------------------

def _flat(name: str) -> str:
    return name.replace(".", "_")


def module_index(unet: torch.nn.Module, text_parts: dict[str, torch.nn.Module] | torch.nn.Module
                 ) -> dict[str, dict[str, str]]:
    """{part: {flattened name: module path}} for every Linear/Conv2d of the U-Net ("unet") and of each text
    encoder the prompt encoder names (`lora_parts`: "te" for SD 1.x/2.x, "te1"/"te2" for SDXL), under each
    name a file may use for it: diffusers' path and the original LDM path for the U-Net (SDXL's
    `label_emb` and deeper transformer stacks included); the transformers path with and without the
    leading `text_model.` for a text encoder. A bare module is the one text encoder ("te")."""
    if isinstance(text_parts, torch.nn.Module):
        text_parts = {"te": text_parts}
    index: dict[str, dict[str, str]] = {"unet": {}, **{part: {} for part in text_parts}}
    layers = unet.config.layers_per_block
    with_attention = {i for i, kind in enumerate(unet.config.up_block_types) if "CrossAttn" in kind}
    for name, module in unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            index["unet"][_flat(name)] = name
            try:
                index["unet"].setdefault(_flat(ldm_export.unet_key(name + ".weight", layers, with_attention)
                                               .removesuffix(".weight")), name)
            except KeyError:
                pass
    for part, text_model in text_parts.items():
        for name, module in text_model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                bare = name.removeprefix("text_model.")  # transformers 5 has no `text_model.` level in CLIP-L
                for alias in (name, bare, "text_model." + bare):
                    index[part].setdefault(_flat(alias), name)
    return index


# A file's key prefix: the parts of a model it may name, and the text-encoder layout it implies ("one":
# SD 1.x/2.x's single encoder, "two": SDXL's pair, None: says nothing about the text encoders).
_PREFIXES = (("lora_unet_", ("unet",), None), ("lora_te1_", ("te1",), "two"), ("lora_te2_", ("te2",), "two"),
             ("lora_te_", ("te",), "one"), ("unet.", ("unet",), None), ("text_encoder_2.", ("te2",), "two"),
             ("text_encoder.", ("te", "te1"), None), ("base_model.model.", ("unet", "te", "te1"), None))


def _target(module_key: str) -> tuple[tuple[str, ...], str, str | None]:
    """(parts of the model to look in, name within it, text-encoder layout) for a file's module key."""
    module_key = _PROCESSOR.sub(lambda m: "." + ("to_out.0" if m[1] == "to_out" else m[1]), module_key)
    module_key = _TE_PROCESSOR.sub(lambda m: f".self_attn.{m[1]}_proj", module_key)
    for prefix, where, layout in _PREFIXES:
        if module_key.startswith(prefix):
            return where, module_key[len(prefix):], layout
    return ("unet", "te", "te1"), module_key, None


@dataclass
class LayerChange:
    """The factors a file gives for one layer."""
    part: str  # "unet", or the text encoder's: "te" (SD 1.x/2.x), "te1" (SDXL's CLIP-L), "te2" (SDXL's bigG)
    module: str  # module path in our model
    tensors: dict[str, torch.Tensor]

    def fits(self, shape: torch.Size) -> bool:
        """Whether the change has as many numbers as the layer's weight, judged from the factors' shapes
        alone (nothing computed); kinds whose size is not read from the shapes here count as fitting."""
        t = self.tensors
        if "down" in t and "up" in t:
            inner = t["down"].flatten(1).shape[1]
            if "mid" in t:
                inner = t["down"].shape[1] * t["mid"].shape[2:].numel()
            return t["up"].shape[0] * inner == shape.numel()
        if "hada_w1_a" in t and "hada_w1_b" in t:
            return t["hada_w1_a"].shape[0] * t["hada_w1_b"].shape[1] == shape.numel()
        if "diff" in t:
            return t["diff"].numel() == shape.numel()
        return True

    def delta(self, shape: torch.Size, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight change at multiplier 1, bias change or None), in float32 on `device`."""
        alpha = float(self.tensors["alpha"]) if "alpha" in self.tensors else None  # read on the CPU: no device sync
        t = {k: v.to(device, torch.float32) for k, v in self.tensors.items() if k != "alpha"}
        bias = t.get("diff_b")
        if "down" in t and "up" in t:
            down, up = t["down"], t["up"]
            scale = alpha / down.shape[0] if alpha is not None else 1.0
            up = up.flatten(1) * scale  # scaling the small factor, not the product
            if "mid" in t:  # Tucker-decomposed conv (LoCon): up(1x1) . mid(kxk) . down(1x1)
                w = torch.einsum("ab...,oa,bi->oi...", t["mid"], up, down.flatten(1))
            else:
                w = up @ down.flatten(1)
            scale = 1.0
        elif "hada_w1_a" in t:
            if "hada_t1" in t:
                raise NetworkError("LoHa with Tucker cores is not supported")
            w = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
            scale = alpha / t["hada_w1_b"].shape[0] if alpha is not None else 1.0
        elif "lokr_w1" in t or "lokr_w1_a" in t:
            if "lokr_t2" in t:
                raise NetworkError("LoKr with Tucker cores is not supported")
            w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
            w2 = t["lokr_w2"] if "lokr_w2" in t else t["lokr_w2_a"] @ t["lokr_w2_b"].flatten(1)
            factored = t.get("lokr_w1_b", t.get("lokr_w2_b"))
            rank = factored.shape[0] if factored is not None else None
            if len(shape) == 4:  # conv: w2 carries the kernel; factor it out to a matrix and back
                w2 = w2.reshape(w2.shape[0], shape[1] // w1.shape[1], *shape[2:]).flatten(1)
            w = torch.kron(w1, w2)
            scale = alpha / rank if alpha is not None and rank else 1.0
        elif "diff" in t:
            w, scale = t["diff"], 1.0
        else:
            raise NetworkError(f"unrecognised factors {sorted(self.tensors)}")
        if w.numel() != shape.numel():
            raise NetworkError(f"shape {tuple(w.shape)} does not fit the layer's {tuple(shape)}")
        if scale != 1.0:
            w = w * scale
        return w.reshape(shape), bias * scale if bias is not None else None


@dataclass
class Network:
    name: str
    changes: list[LayerChange]
    unmatched: list[str]  # module keys that name no layer of this model
    unsupported: list[str]  # kinds of keys we do not apply (DoRA, OFT, ...)
    layouts: set[str] = field(default_factory=set)  # text-encoder layouts its keys imply ("one", "two")

    def other_family(self, models: dict[str, torch.nn.Module]) -> str | None:
        """Why this network is made for another model family than `models` (None if it is not). It is when
        (1) its text-encoder keys are all of the other layout: `lora_te_` (one encoder, SD 1.x/2.x) on a
        model with two encoders (SDXL), or `lora_te1_`/`lora_te2_`/`text_encoder_2.` (two encoders) on a
        model with one; or (2) more than half of its U-Net cross-attention key/value layers (`attn2.to_k`,
        `attn2.to_v`, whose input width is the family's text-context width: 768 SD 1.x, 1024 SD 2.x,
        2048 SDXL) do not fit the model's; or (3) more than half of all its layers match no layer of the
        model or do not fit the shape of the layer they name. A network that fits but misses a few
        layers is applied (those layers are reported)."""
        own = "two" if "te1" in models else "one"
        if self.layouts and own not in self.layouts:
            kind = "SDXL's two text encoders" if own == "one" else "a single text encoder (SD 1.x/2.x)"
            return f"its text-encoder layers are for {kind}"
        fitting = [(c, c.fits(models[c.part].get_submodule(c.module).weight.shape)) for c in self.changes]
        context = [fits for c, fits in fitting if c.part == "unet" and c.module.endswith(("attn2.to_k", "attn2.to_v"))]
        if context and context.count(False) * 2 > len(context):
            return (f"{context.count(False)} of its {len(context)} cross-attention key/value layers do not fit: "
                    "they are made for another text-context width")
        misfits = len(self.unmatched) + [fits for _, fits in fitting].count(False)
        total = len(self.unmatched) + len(self.changes)
        if total and misfits * 2 > total:
            return f"{misfits} of its {total} layers match no layer of this model or do not fit its shape"
        return None


def peft_alphas(metadata: dict) -> dict[str, dict]:
    """{"unet"|"text_encoder": PEFT LoraConfig fields} from the `lora_adapter_metadata` JSON that
    diffusers writes into a .safetensors file ({} when absent or unreadable)."""
    raw = metadata.get("lora_adapter_metadata") if metadata else None
    try:
        packed = json.loads(raw) if isinstance(raw, str) else {}
    except json.JSONDecodeError:
        return {}
    out: dict[str, dict] = {}
    for key, value in packed.items() if isinstance(packed, dict) else ():
        prefix, _, field_name = key.partition(".")
        out.setdefault(prefix, {})[field_name] = value
    return out


def _peft_alpha(config: dict, module: str, rank: int) -> float | None:
    """The alpha to use with our alpha/rank scale for a PEFT layer: `alpha_pattern` (a suffix of the
    module path) or `lora_alpha`; with rsLoRA, PEFT scales by alpha/sqrt(rank) instead."""
    alpha = config.get("lora_alpha")
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if module == pattern or module.endswith("." + pattern):
            alpha = value
    if not isinstance(alpha, (int, float)):
        return None
    return float(alpha) * rank ** 0.5 if config.get("use_rslora") else float(alpha)


def read_network(sd: dict[str, torch.Tensor], index: dict[str, dict[str, str]], name: str,
                 metadata: dict | None = None) -> Network:
    """Group a network file's tensors by the layer they change. PEFT files carry no alpha tensors;
    their alpha comes from the metadata diffusers writes, when present."""
    peft = peft_alphas(metadata or {})
    groups: dict[str, dict[str, torch.Tensor]] = {}
    peft_modules: set[str] = set()
    unsupported: set[str] = set()
    for key, tensor in sd.items():
        m = _KEY.match(key)
        if not m:
            unsupported.add(key.rsplit(".", 1)[-1])
            continue
        part = _CANONICAL.get(m["part"], m["part"])
        if part in ("dora_scale", "lora_magnitude_vector", "on_input", "oft_blocks", "oft_diag", "w_norm", "b_norm"):
            unsupported.add(m["part"])
            continue
        groups.setdefault(m["module"], {})[part] = tensor
        if m["part"] in ("lora_A.weight", "lora_B.weight"):
            peft_modules.add(m["module"])
    changes, unmatched = [], []
    layouts: set[str] = set()
    for module_key, tensors in groups.items():
        where, rest, layout = _target(module_key)
        if layout is not None:
            layouts.add(layout)
        found = next(((p, index[p][_flat(rest)]) for p in where if _flat(rest) in index.get(p, ())), None)
        if found is None:
            unmatched.append(module_key)
            continue
        prefix, _, inner = module_key.partition(".")
        if module_key in peft_modules and "alpha" not in tensors and prefix in peft and "down" in tensors:
            alpha = _peft_alpha(peft[prefix], inner, tensors["down"].shape[0])
            if alpha is not None:
                tensors["alpha"] = torch.tensor(alpha)
        changes.append(LayerChange(found[0], found[1], tensors))
    return Network(name, changes, unmatched, sorted(unsupported), layouts)


# --- patching weights ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Activation:
    """One network to apply, with its text-encoder and U-Net multipliers."""
    info: LoraInfo
    te: float
    unet: float
    mentioned: str  # the name as written in the prompt (infotext uses it)

    @property
    def key(self) -> tuple:
        return (str(self.info.filename), self.info.mtime, self.te, self.unet)


class WeightPatcher:
    """Merges networks into one loaded model's weights and takes them out again exactly.

    The first time a parameter is changed its original value is copied to the CPU and kept there (as
    A1111 keeps its backups), so switching networks costs no new copies; `restore` copies the
    originals of the changed parameters back. `apply` restores first, so the weights are always
    base + the networks of the latest call."""

    def __init__(self, unet: torch.nn.Module, text_parts: dict[str, torch.nn.Module] | torch.nn.Module):
        """`text_parts`: the text encoders by the part names of `module_index` (a bare module: "te")."""
        if isinstance(text_parts, torch.nn.Module):
            text_parts = {"te": text_parts}
        self.models = {"unet": unet, **text_parts}
        self._index: dict[str, dict[str, str]] | None = None
        self._originals: dict[tuple[str, str], tuple[torch.nn.Parameter, torch.Tensor]] = {}
        self._changed: set[tuple[str, str]] = set()  # parameters that differ from their original now
        self.applied: tuple = ()
        self.notes: list[str] = []  # what the latest apply had to say (kept for a repeated apply)
        self.seconds = 0.0  # time the latest apply or restore took

    @property
    def index(self) -> dict[str, dict[str, str]]:
        if self._index is None:
            self._index = module_index(self.models["unet"], {k: v for k, v in self.models.items() if k != "unet"})
        return self._index

    @property
    def unet_changed(self) -> bool:
        """Whether a network has changed a U-Net weight now."""
        return any(part == "unet" for part, _ in self._changed)

    @property
    def text_changed(self) -> bool:
        """Whether a network has changed a text encoder's weight now."""
        return any(part != "unet" for part, _ in self._changed)

    def forget(self) -> None:
        """Drop the backups (the model's weights are being freed; nothing will be restored)."""
        self._originals.clear()
        self._changed.clear()
        self.applied, self.notes = (), []

    @torch.no_grad()
    def restore(self) -> None:
        start = time.perf_counter()
        for key in self._changed:
            param, original = self._originals[key]
            if param.dtype == original.dtype:
                param.copy_(original)
            else:  # widened by the change (low_memory.patch_dtype): back to the stored type and its memory
                param.data = original.to(param.device, copy=True)
        self._changed.clear()
        self.applied, self.notes = (), []
        self.seconds = time.perf_counter() - start

    @torch.no_grad()
    def _add(self, part: str, module_name: str, attr: str, delta: torch.Tensor, multiplier: float) -> None:
        layer = self.models[part].get_submodule(module_name)
        param = getattr(layer, attr)
        key = (part, f"{module_name}.{attr}")
        if key not in self._originals:
            self._originals[key] = (param, param.detach().to("cpu", copy=True))
        # the first network to change an FP8 layer with float16 copies (cache_fp16_weight) starts from the copy
        start = low_memory.fp16_copy(layer, attr) if key not in self._changed else None
        self._changed.add(key)
        if param.dtype != (wanted := low_memory.patch_dtype(layer, param)):
            param.data = param.data.to(wanted)
        if start is not None:
            param.copy_((start.to(param.device).float() + delta * multiplier).to(param.dtype))
        elif param.dtype == torch.float32:
            param.add_(delta, alpha=multiplier)
        else:  # sum in fp32, round once
            param.copy_((param.float() + delta * multiplier).to(param.dtype))

    def apply(self, activations: list[Activation], read=checkpoint_file.read_state_dict) -> list[str]:
        """Make the weights base + these networks. Returns notes for the user (skipped layers). Nothing
        is done when the same networks with the same multipliers are applied already."""
        wanted = tuple(a.key for a in activations)
        if wanted == self.applied:
            return list(self.notes)
        self.restore()
        start = time.perf_counter()
        notes: list[str] = []
        try:
            for act in activations:
                try:
                    network = read_network(read(act.info.filename), self.index, act.info.name, act.info.metadata)
                except checkpoint_file.CheckpointError as e:
                    notes.append(f"LoRA {act.mentioned!r} could not be read: {e}")
                    continue
                reason = network.other_family(self.models)
                if reason is not None:
                    notes.append(f"LoRA {act.mentioned!r} skipped: it is made for another model family ({reason})")
                    continue
                applied = 0
                for change in network.changes:
                    multiplier = act.unet if change.part == "unet" else act.te
                    if multiplier == 0:
                        continue
                    module = self.models[change.part].get_submodule(change.module)
                    try:
                        delta, bias = change.delta(module.weight.shape, module.weight.device)
                    except NetworkError as e:
                        notes.append(f"LoRA {act.mentioned!r}: layer {change.module} skipped ({e})")
                        continue
                    self._add(change.part, change.module, "weight", delta, multiplier)
                    if bias is not None and module.bias is not None:
                        self._add(change.part, change.module, "bias", bias, multiplier)
                    applied += 1
                if network.unmatched:
                    notes.append(f"LoRA {act.mentioned!r}: {len(network.unmatched)} layer(s) match nothing in this "
                                 f"model (e.g. {network.unmatched[0]}); is it for another model family?")
                if network.unsupported:
                    notes.append(f"LoRA {act.mentioned!r}: ignored unsupported parts "
                                 f"{', '.join(network.unsupported)}")
                if not network.changes and not network.unmatched:
                    notes.append(f"LoRA {act.mentioned!r}: no LoRA weights found in the file")
                log.debug("LoRA %s: %d layers changed", act.info.name, applied)
        except BaseException:
            self.restore()
            raise
        self.applied, self.notes = wanted, notes
        self.seconds = time.perf_counter() - start
        return list(notes)

    @property
    def touched(self) -> int:
        """How many parameters currently differ from the base."""
        return len(self._changed)

    def drop_backups(self, text_only: bool = False) -> None:
        """Forget the kept originals of parameters that are at their base value (frees their memory); `text_only`:
        of the text encoders' parameters only."""
        self._originals = {k: v for k, v in self._originals.items()
                           if k in self._changed or (text_only and k[0] == "unet")}


# --- prompt tags ---------------------------------------------------------------------------------

def activation_from_tag(positional: list[str], named: dict[str, str], info: LoraInfo) -> Activation:
    """A1111's reading of `<lora:NAME:TE:UNET>`: the first number is the text-encoder multiplier
    (default 1), the second the U-Net's (default: the first); `te=` and `unet=` override them."""
    te = float(positional[1]) if len(positional) > 1 else 1.0
    te = float(named.get("te", te))
    unet = float(positional[2]) if len(positional) > 2 else te
    unet = float(named.get("unet", unet))
    return Activation(info, te, unet, positional[0])
