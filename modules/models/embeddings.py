"""Textual-inversion embeddings: learned token vectors in files under `embeddings/`.

A file's name (without extension) used as a word in a prompt stands for its vectors. Formats read:
- A1111 `.pt`/`.bin`: `{"string_to_param": {"*": tensor(n, width)}, "name", "step", "sd_checkpoint", ...}`
  (read with the safe loader; nothing in the file is run), also with the ParameterDict the original
  textual-inversion code saved;
- A1111 `.safetensors`: `emb_params` (n, width);
- diffusers `.bin`/`.safetensors`: one entry `{"<token>": tensor(width) or (n, width)}`;
- SDXL `.safetensors`: `clip_l` (n, CLIP-L's width) and `clip_g` (n, bigG's width), one tensor per text
  encoder, spliced by each encoder at the same token positions.
An embedding's `signature` (its tensors' names and widths) must hold every part the loaded model's prompt
encoder declares, at its width (the SDXL refiner uses an SDXL file's `clip_g` alone); the others are
"skipped", as A1111 lists them (an SD 1.x embedding on SDXL, an SDXL one on SD 1.x/2.x, a 1024-wide one on
SD 1.x).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from modules.models import checkpoint_file
from modules.models.previews import preview_beside
from modules.models.registry import natural_key

log = logging.getLogger(__name__)

EMBEDDING_EXTENSIONS = (".pt", ".bin", ".safetensors")


class EmbeddingError(Exception):
    pass


@dataclass
class Embedding:
    name: str
    filename: Path
    vectors: torch.Tensor  # (n, width); an SDXL file's tensors side by side (clip_l, then clip_g)
    mtime: float
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    sha256: str | None = None
    parts: dict[str, torch.Tensor] | None = None  # SDXL: {"clip_l": (n, w_l), "clip_g": (n, w_g)}
    _views: dict[str, Embedding] = field(default_factory=dict, repr=False, compare=False)

    @property
    def signature(self) -> tuple[tuple[str, int], ...]:
        """(tensor name, width) of each of its tensors, sorted; ("", width) for a single-tensor file."""
        if self.parts:
            return tuple(sorted((name, v.shape[1]) for name, v in self.parts.items()))
        return (("", self.width),)

    def for_part(self, part: str) -> Embedding:
        """The embedding as one text encoder splices it: only the tensor named `part` ("" : all)."""
        if not part or not self.parts:
            return self
        if part not in self._views:
            self._views[part] = replace(self, vectors=self.parts[part], parts=None, _views={})
        return self._views[part]

    @property
    def width(self) -> int:
        return self.vectors.shape[1]

    @property
    def count(self) -> int:
        return self.vectors.shape[0]

    @property
    def preview(self) -> Path | None:
        """The card image beside the file (NAME.png, NAME.preview.png, ...), if any."""
        return preview_beside(self.filename)


def sdxl_parts(data: dict, filename: str) -> dict[str, torch.Tensor] | None:
    """An SDXL file's {"clip_l", "clip_g"} (n, width) tensors (same n), or None for other layouts."""
    if not (isinstance(data.get("clip_l"), torch.Tensor) and isinstance(data.get("clip_g"), torch.Tensor)):
        return None
    parts = {k: data[k].detach().float() for k in ("clip_l", "clip_g")}
    parts = {k: v[None] if v.dim() == 1 else v for k, v in parts.items()}
    if any(v.dim() != 2 for v in parts.values()) or parts["clip_l"].shape[0] != parts["clip_g"].shape[0]:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in parts.items())
        raise EmbeddingError(f"{filename}: SDXL embedding tensors must be (vectors, width) with as many vectors "
                             f"each; found {shapes}")
    return parts


def vectors_from(data: dict, filename: str) -> torch.Tensor:
    """The (n, width) vectors of an embedding file's contents."""
    if "string_to_param" in data:
        params = data["string_to_param"]
        if isinstance(params, checkpoint_file.ParameterDictData):
            params = params.parameters
        if not isinstance(params, dict) or not params:
            raise EmbeddingError(f"{filename}: string_to_param is not a plain dict of tensors")
        tensor = next(iter(params.values()))
    elif "emb_params" in data:
        tensor = data["emb_params"]
    else:
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if len(tensors) != 1:
            keys = ", ".join(sorted(map(str, data))[:4])
            raise EmbeddingError(f"{filename}: not an embedding layout we know (keys: {keys})")
        tensor = tensors[0]
    if not isinstance(tensor, torch.Tensor):
        raise EmbeddingError(f"{filename}: the embedding is not a tensor")
    tensor = tensor.detach().float()
    if tensor.dim() == 1:
        tensor = tensor[None]
    if tensor.dim() != 2:
        raise EmbeddingError(f"{filename}: expected (vectors, width), found shape {tuple(tensor.shape)}")
    return tensor


def read_embedding(path: Path) -> Embedding:
    if path.suffix.lower() == ".safetensors":
        data: dict = checkpoint_file.read_state_dict(path)
    else:
        data = checkpoint_file.read_object(path)
        if not isinstance(data, dict):
            raise EmbeddingError(f"{path.name}: not an embedding file")
    parts = sdxl_parts(data, path.name)
    vectors = torch.cat([parts["clip_l"], parts["clip_g"]], dim=1) if parts else vectors_from(data, path.name)

    def text(key: str) -> str | None:
        v = data.get(key)
        return v if isinstance(v, str) else None

    step = data.get("step")
    return Embedding(path.stem, path, vectors, path.stat().st_mtime, step if isinstance(step, int) else None,
                     text("sd_checkpoint"), text("sd_checkpoint_name"), parts=parts)


class EmbeddingRegistry:
    """The embeddings folder, read again when its files change (checked cheaply at each job)."""

    def __init__(self, folders: tuple[Path, ...], hashes=None):
        self.folders = tuple(folders)
        self.hashes = hashes
        self._lock = threading.Lock()
        self._items: dict[str, Embedding] = {}
        self.errors: dict[str, str] = {}
        self._stamp: tuple = ()
        self.version = 0  # increases whenever the set of embeddings changes
        self.refresh()

    def _scan(self) -> list[Path]:
        found = []
        for folder in self.folders:
            if folder.is_dir():
                found += [p for p in sorted(folder.rglob("*"))
                          if p.suffix.lower() in EMBEDDING_EXTENSIONS and p.is_file()]
        return found

    def refresh(self, force: bool = True) -> dict[str, Embedding]:
        """Reread the folder (only changed files). With `force=False`, return at once when no file was
        added, removed or modified since the last scan."""
        files = self._scan()
        stamp = tuple((str(p), p.stat().st_mtime) for p in files)
        with self._lock:
            if not force and stamp == self._stamp:
                return dict(self._items)
            old = {e.filename: e for e in self._items.values()}
            items: dict[str, Embedding] = {}
            errors: dict[str, str] = {}
            for path in files:
                previous = old.get(path)
                if previous is not None and previous.mtime == path.stat().st_mtime:
                    emb = previous
                else:
                    try:
                        emb = read_embedding(path)
                    except (EmbeddingError, checkpoint_file.CheckpointError) as e:
                        errors[path.stem] = str(e)
                        log.warning("Embedding %s skipped: %s", path.name, e)
                        continue
                if emb.name in items:
                    log.warning("Embedding %s: a file of the same name was found first; this one is ignored", path)
                    continue
                items[emb.name] = emb
            self._items = dict(sorted(items.items(), key=lambda kv: natural_key(kv[0])))
            self.errors, self._stamp = errors, stamp
            self.version += 1
            return dict(self._items)

    def all(self) -> dict[str, Embedding]:
        with self._lock:
            return dict(self._items)

    def short_hash(self, emb: Embedding) -> str:
        """First 12 hex of the file's SHA-256, as A1111's `TI hashes` shows it."""
        if emb.sha256 is None:
            from modules.hashing import sha256_of_file
            emb.sha256 = self.hashes.sha256(emb.filename) if self.hashes else sha256_of_file(emb.filename)
        return emb.sha256[:12]


class EmbeddingVocabulary:
    """The embeddings usable with one model's prompt encoder, found in token sequences by their names'
    tokens (longest name first at each position, as A1111 matches them). `signature` is the encoder's
    `embedding_signature` (a bare width means a single-tensor embedding of that width)."""

    def __init__(self, embeddings: dict[str, Embedding], tokenize, signature: tuple | int, key: Hashable = None):
        self.key = key  # what it was built from (the model manager's, to rebuild it only on a change)
        needed = set((("", signature),) if isinstance(signature, int) else signature)
        self.usable = {n: e for n, e in embeddings.items() if needed <= set(e.signature)}
        self.skipped = {n: e for n, e in embeddings.items() if n not in self.usable}
        self._by_first: dict[int, list[tuple[tuple[int, ...], Embedding]]] = {}
        for name, emb in self.usable.items():
            ids = tuple(tokenize(name))
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, emb))
        for options in self._by_first.values():
            options.sort(key=lambda o: -len(o[0]))

    def __bool__(self) -> bool:
        return bool(self._by_first)

    def match(self, ids: list[int], i: int) -> tuple[int, Embedding] | None:
        """(number of tokens of the name, embedding) if an embedding's name starts at ids[i]."""
        for name_ids, emb in self._by_first.get(ids[i], ()):
            if tuple(ids[i:i + len(name_ids)]) == name_ids:
                return len(name_ids), emb
        return None
