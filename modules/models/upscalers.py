"""Model upscalers (ESRGAN, Real-ESRGAN, DAT, HAT and every other image-to-image architecture spandrel knows), found
in A1111's folders and run as A1111 runs them.

Folders and names, as in A1111: models/ESRGAN (--esrgan-models-path), models/RealESRGAN (--realesrgan-models-path),
models/DAT (--dat-models-path) and models/HAT. A file is listed under its file name without the extension, except
the files A1111 knows by another name (RealESRGAN_x4plus.pth is "R-ESRGAN 4x+", DAT_x4.pth is "DAT x4"), so an
infotext written by A1111 names the same upscaler here. Nothing is ever downloaded: A1111 lists its Real-ESRGAN
and DAT models before their files exist and downloads them on first use; here only files that are present are
listed. `.pth`/`.pt` files are read with the safe loader (modules/models/checkpoint_file): no code in them runs.

Running, as A1111's `upscale_with_model`: the image in tiles (settings ESRGAN_tile / ESRGAN_tile_overlap, DAT's
own for models/DAT; see modules/upscaling), each tile given to the model in BGR channel order with values in
0..1 (A1111 has always fed these models BGR, so its images, and ours, come from that order), the output rounded
to 8 bits. On a GPU, Real-ESRGAN and DAT models run in fp16 unless --no-half, as in A1111; the others in fp32.

spandrel's package metadata asks for torchvision, which only two architectures we do not use import (LaMa,
an inpainting model, and RestoreFormer, a face restorer); a torchvision built for another torch breaks
`import torch`-level registrations, so spandrel is installed without its dependencies (requirements-nodeps.txt)
and, where torchvision is absent, imported with those two names standing in (they raise if ever called).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import re
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from modules import upscaling
from modules.devices import DevicePlan
from modules.models import checkpoint_file
from modules.models.checkpoint_file import CheckpointError

log = logging.getLogger(__name__)

EXTENSIONS = (".pth", ".pt", ".safetensors")

HALF_KINDS = ("RealESRGAN", "DAT")  # A1111 runs these in fp16 on a GPU (prefer_half); the others in fp32

# Files A1111 lists under a name of its own (its built-in Real-ESRGAN and DAT models), by lower-case file name.
KNOWN_FILES = {
    "realesrgan_x4plus.pth": ("R-ESRGAN 4x+", 4),
    "realesrgan_x4plus_anime_6b.pth": ("R-ESRGAN 4x+ Anime6B", 4),
    "realesrgan_x2plus.pth": ("R-ESRGAN 2x+", 2),
    "realesr-general-x4v3.pth": ("R-ESRGAN General 4xV3", 4),
    "realesr-general-wdn-x4v3.pth": ("R-ESRGAN General WDN 4xV3", 4),
    "realesr-animevideov3.pth": ("R-ESRGAN AnimeVideo", 4),
    "dat_x2.pth": ("DAT x2", 2),
    "dat_x3.pth": ("DAT x3", 3),
    "dat_x4.pth": ("DAT x4", 4),
}


class UpscalerError(CheckpointError):
    """An upscaler file that cannot be used, with a message meant for the user."""


@dataclass(frozen=True)
class UpscalerFile:
    name: str  # what the lists, the API and infotexts call it
    path: Path
    kind: str  # the folder it was found in: one of paths.UPSCALER_KINDS
    scale: int | None  # its factor as its name says (A1111 reports 4 for the files it cannot tell)

    @property
    def tile_settings(self) -> tuple[str, str]:
        """The settings that give its tile size and overlap."""
        return ("DAT_tile", "DAT_tile_overlap") if self.kind == "DAT" else ("ESRGAN_tile", "ESRGAN_tile_overlap")


def _scale_from_name(stem: str) -> int | None:
    m = re.search(r"(?:^|[^a-z0-9])(\d)x(?:[^a-z0-9]|$)|(?:^|[^a-z0-9])x(\d)(?:[^a-z0-9]|$)", stem.lower())
    return int(m.group(1) or m.group(2)) if m else None


def describe_file(path: Path, kind: str) -> UpscalerFile:
    known = KNOWN_FILES.get(path.name.lower())
    if known is not None:
        return UpscalerFile(known[0], path, kind, known[1])
    return UpscalerFile(path.stem, path, kind, _scale_from_name(path.stem) or 4)


_import_lock = threading.Lock()


def _spandrel():
    """spandrel, imported on first use (about 2 s); see the module's note about torchvision."""
    with _import_lock:
        if "spandrel" in sys.modules or importlib.util.find_spec("torchvision") is not None:
            import spandrel
            return spandrel

        def unavailable(*_args, **_kwargs):
            raise RuntimeError("this architecture needs torchvision, which is not installed")

        stand_ins = {name: types.ModuleType(name) for name in
                     ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")}
        for name, module in stand_ins.items():  # a spec, so that find_spec elsewhere meanwhile answers, not raises
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        functional = stand_ins["torchvision.transforms.functional"]
        functional.InterpolationMode = types.SimpleNamespace(  # type: ignore[attr-defined]
            NEAREST=None, BILINEAR=None, BICUBIC=None)
        functional.rotate = functional.normalize = unavailable  # type: ignore[attr-defined]
        sys.modules.update(stand_ins)
        try:
            import spandrel
        finally:
            for name in stand_ins:  # gone again: nothing else may take them for torchvision
                sys.modules.pop(name, None)
        return spandrel


def _state_dict(path: Path) -> dict[str, Any]:
    if path.suffix.lower() == ".safetensors":
        return checkpoint_file.read_state_dict(path)
    found = checkpoint_file.read_object(path)
    if not isinstance(found, dict):
        raise UpscalerError(f"{path.name} does not hold a model's weights (found {type(found).__name__})")
    return found


def load_descriptor(path: Path, device: torch.device, half: bool):
    """The spandrel model in `path`, on `device`, in fp16 when `half` and the architecture allows it.
    UpscalerError says why a file cannot be used: unreadable, an architecture spandrel does not know, or a model
    that is not an upscaler (face restoration, inpainting, not 3 channels), or spandrel itself not importable (a
    torchvision built for another torch breaks it: see the module's note)."""
    try:
        spandrel = _spandrel()
    except Exception as e:  # ImportError, or a broken torchvision's RuntimeError
        raise UpscalerError(f"model upscalers need the spandrel package, which could not be imported "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); reinstall it with "
                            "pip install --no-deps -r requirements-nodeps.txt, and remove a torchvision that does "
                            "not match torch") from None
    state = _state_dict(path)
    try:
        model = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise UpscalerError(f"{path.name} is not an upscaler model this program knows (it reads the "
                            "architectures spandrel 0.4 supports: ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, SPAN, "
                            "OmniSR, ...)") from None
    except MemoryError:
        raise
    except Exception as e:  # a file spandrel half-recognises fails in its own ways (shapes, keys, asserts)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UpscalerError(f"{path.name} could not be loaded as an upscaler: {first}") from None
    finally:
        del state
    if not isinstance(model, spandrel.ImageModelDescriptor) or model.purpose not in ("SR", "Restoration"):
        raise UpscalerError(f"{path.name} is a {model.architecture.name} model for {model.purpose}, not an upscaler")
    if model.input_channels != 3 or model.output_channels != 3:
        raise UpscalerError(f"{path.name} works on {model.input_channels}-channel images; upscalers here take RGB")
    model.to(device)
    if half and model.supports_half:
        model.model.half()
    model.eval()
    return model


def _run_tile(model, tile: Image.Image) -> Image.Image:
    """One tile through the model, with A1111's conversions: BGR, values / 255 in float64 then the model's dtype;
    back clamped, times 255, rounded."""
    param = next(model.model.parameters())
    bgr = np.asarray(tile.convert("RGB"))[:, :, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)) / 255)[None]
    with torch.inference_mode():
        y = model(x.to(device=param.device, dtype=param.dtype))
        values = y[0].float().cpu().clamp_(0, 1).numpy()
    rgb = (255.0 * np.moveaxis(values, 0, 2)).round().astype(np.uint8)[:, :, ::-1]
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB")


def reserved(name: str) -> bool:
    """A name a model upscaler cannot have: a plain upscaler's, or a Hires. fix latent mode's (all "Latent...")."""
    return name in upscaling.BUILTIN or name.startswith("Latent")


class UpscalerModels:
    """The model upscalers in the folders, listed afresh each time they are asked for (a file dropped in shows
    without a restart), and the last one used kept loaded. Thread-safe."""

    def __init__(self, folders: tuple[tuple[str, Path], ...], plan: DevicePlan):
        self.folders = tuple((kind, Path(folder)) for kind, folder in folders)
        self.plan = plan
        self._lock = threading.Lock()
        self._loaded: tuple[tuple[Path, float, int], Any] | None = None
        self._noted: set[Path] = set()  # files left out, already named in the log

    def _leave_out(self, path: Path, why: str) -> None:
        if path not in self._noted:
            self._noted.add(path)
            log.warning("Upscaler file %s is not listed: %s", path, why)

    def files(self) -> list[UpscalerFile]:
        """Every upscaler file, sorted by name as A1111 sorts its list; of two files with one name, the first
        folder's (in paths.UPSCALER_KINDS order) is listed. A file left out (that, or a name of a plain upscaler or
        latent mode) is named in the log once."""
        found: dict[str, UpscalerFile] = {}
        for kind, folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() not in EXTENSIONS or not path.is_file():
                    continue
                item = describe_file(path, kind)
                if reserved(item.name):
                    self._leave_out(path, f"{item.name!r} names a built-in upscaler; rename the file")
                elif item.name in found:
                    self._leave_out(path, f"{found[item.name].path} has the name {item.name!r}")
                else:
                    found[item.name] = item
        return sorted(found.values(), key=lambda f: f.name.lower())

    def find(self, name: str) -> UpscalerFile | None:
        return next((f for f in self.files() if f.name == name), None)

    def half(self, item: UpscalerFile) -> bool:
        return item.kind in HALF_KINDS and self.plan.unet_dtype == torch.float16

    def load(self, item: UpscalerFile):
        """The file's model, read on first use and kept until another one is used (or the file changes)."""
        try:
            stat = item.path.stat()
        except OSError as e:
            raise UpscalerError(f"{item.path.name} cannot be read ({e.strerror or e})") from None
        key = (item.path, stat.st_mtime, stat.st_size)
        with self._lock:
            if self._loaded is not None and self._loaded[0] == key:
                return self._loaded[1]
            self._loaded = None  # the previous one goes before the next is read
            model = load_descriptor(item.path, self.plan.device, self.half(item))
            self._loaded = (key, model)
            return model

    def model_pass(self, item: UpscalerFile, tile: int, overlap: int, check: upscaling.Check | None = None,
                   on_tile: Callable[[int, int], None] | None = None) -> upscaling.Pass:
        """One pass of the model over an image, in tiles (see upscaling.tiled)."""
        model = self.load(item)
        return lambda image: upscaling.tiled(image, lambda t: _run_tile(model, t), tile, overlap, check, on_tile)
