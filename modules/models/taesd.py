"""TAESD: the tiny autoencoder (madebyollin/taesd) A1111 uses for fast live previews and, when asked
(`sd_vae_decode_method` / `sd_vae_encode_method` = TAESD), for the VAE decode and encode of a job.

The files are the original ones, read from `models/VAE-taesd` and never downloaded: `taesd_decoder.pth` and
`taesd_encoder.pth` for SD 1.x / 2.x, `taesdxl_decoder.pth` and `taesdxl_encoder.pth` for SDXL (which one a
model needs is its family's `vae_kind`). Each is a plain state dict of the original `Decoder` / `Encoder`
`nn.Sequential`, read with the safe loader (no code in the file runs). Its weights are mapped onto diffusers'
`DecoderTiny` / `EncoderTiny` (the two halves of `AutoencoderTiny`): the encoder's layers have the same indices;
the original decoder starts with a parameterless Clamp layer that diffusers does in `forward`, so each of its
layer indices is one lower in diffusers (as diffusers' convert_tiny_autoencoder_to_diffusers.py maps them).
A `.safetensors` file of the same stem, or one in diffusers' layout (`layers.N...` or `decoder.layers.N...`),
is read too.

TAESD works on the model's scaled latents directly (no scaling factor): the decoder gives pixels in [-1, 1]
(diffusers' convention) and the encoder takes them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
from diffusers.models.autoencoders.vae import DecoderTiny, EncoderTiny

from modules.models import checkpoint_file
from modules.models.checkpoint_file import CheckpointError

log = logging.getLogger(__name__)

PARTS = ("decoder", "encoder")
FILE_STEMS = {"sd": "taesd", "sdxl": "taesdxl"}  # vae_kind -> the files' prefix
EXTENSIONS = (".pth", ".safetensors")
WIDTH = 64  # every TAESD layer's channels
DECODER_BLOCKS = (3, 3, 3, 1)
ENCODER_BLOCKS = (1, 3, 3, 3)
SOURCE = "https://github.com/madebyollin/taesd"


class TaesdMissing(CheckpointError):
    """The TAESD file a model needs is not in the folder (it is never downloaded)."""


def file_name(vae_kind: str, part: str) -> str:
    """The original file name for a model's `vae_kind` ("sd" or "sdxl") and a part ("decoder" or "encoder")."""
    if part not in PARTS:
        raise ValueError(f"TAESD part {part!r}: use one of {', '.join(PARTS)}")
    stem = FILE_STEMS.get(vae_kind)
    if stem is None:
        raise TaesdMissing(f"There is no TAESD for this model's kind of VAE ({vae_kind!r}); TAESD exists for "
                           "SD 1.x / 2.x and SDXL")
    return f"{stem}_{part}.pth"


def diffusers_keys(sd: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """An original TAESD state dict (`1.weight`, `3.conv.0.weight`, ...) as DecoderTiny / EncoderTiny keys
    (`layers.0.weight`, `layers.2.conv.0.weight`, ...). Keys already in diffusers' layout, with or without the
    `decoder.` / `encoder.` prefix of an AutoencoderTiny file, are kept."""
    out: dict[str, torch.Tensor] = {}
    shift = 1 if part == "decoder" else 0  # the original decoder's layer 0 is Clamp (no weights)
    for key, value in sd.items():
        if key.startswith(f"{part}."):
            key = key[len(part) + 1:]
        if key.startswith("layers."):
            out[key] = value
            continue
        index, _, rest = key.partition(".")
        if not index.isdigit() or not rest:
            raise CheckpointError(f"not a TAESD {part}: unexpected weight {key!r}")
        out[f"layers.{int(index) - shift}.{rest}"] = value
    return out


def latent_channels(sd: dict[str, torch.Tensor], part: str) -> int:
    """The latent channels the weights were made for (4 for SD and SDXL)."""
    if part == "decoder":
        weight = sd.get("layers.0.weight")
        return int(weight.shape[1]) if weight is not None else 4
    last = max((int(k.split(".")[1]) for k in sd if k.endswith(".weight") and k.count(".") == 2), default=-1)
    weight = sd.get(f"layers.{last}.weight")
    return int(weight.shape[0]) if weight is not None else 4


def build(sd: dict[str, torch.Tensor], part: str) -> torch.nn.Module:
    """DecoderTiny / EncoderTiny with the weights of `sd` (original or diffusers layout), strictly: every
    weight of the module must be in the file and every weight of the file used. Evaluation mode, fp32."""
    mapped = diffusers_keys(sd, part)
    channels = latent_channels(mapped, part)
    if part == "decoder":
        module: torch.nn.Module = DecoderTiny(channels, 3, DECODER_BLOCKS, (WIDTH,) * 4, 2, "relu", "nearest")
    else:
        module = EncoderTiny(3, channels, ENCODER_BLOCKS, (WIDTH,) * 4, "relu")
    try:
        module.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"not a TAESD {part} ({str(e).splitlines()[0]})") from None
    return module.eval().requires_grad_(False)


class TaesdModels:
    """The TAESD decoders and encoders of one folder, each read once when first needed and kept (about 5 MB
    each). Thread-safe: the job's thread and the page's preview may ask at once."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, str], tuple[float, torch.nn.Module]] = {}  # (kind, part) -> (mtime, module)
        self._noted: set[str] = set()  # absent files already named in the log

    def path(self, vae_kind: str, part: str) -> Path | None:
        """The file for a kind and part, or None when there is none."""
        stem = Path(file_name(vae_kind, part)).stem
        for ext in EXTENSIONS:
            candidate = self.folder / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
        return None

    def missing_message(self, vae_kind: str, part: str) -> str | None:
        """Why `get` would fail: the file to put where, or None when it is there."""
        try:
            name = file_name(vae_kind, part)
        except TaesdMissing as e:
            return str(e)
        if self.path(vae_kind, part) is not None:
            return None
        return (f"TAESD needs {name} in {self.folder}; it is not there. It is never downloaded: get it from "
                f"{SOURCE} and put it in that folder")

    def check(self, vae_kind: str, part: str) -> None:
        """Raise TaesdMissing naming the file and the folder when it is not there."""
        message = self.missing_message(vae_kind, part)
        if message:
            raise TaesdMissing(message)

    def get(self, vae_kind: str, part: str, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The decoder or encoder for a model's `vae_kind`, read on first use (and again when its file changed).
        TaesdMissing names the file and folder when it is absent; CheckpointError when it is not a TAESD."""
        self.check(vae_kind, part)
        path = self.path(vae_kind, part)
        assert path is not None
        mtime = path.stat().st_mtime
        with self._lock:
            cached = self._loaded.get((vae_kind, part))
            if cached is None or cached[0] != mtime:
                try:
                    module = build(checkpoint_file.read_state_dict(path), part)
                except CheckpointError as e:
                    raise CheckpointError(f"{path.name}: {e}") from None
                cached = (mtime, module)
                self._loaded[(vae_kind, part)] = cached
            module = cached[1]
            if next(module.parameters()).device != torch.device(device):
                module.to(device)
            return module

    def preview_decoder(self, vae_kind: str, device: torch.device | str = "cpu") -> torch.nn.Module | None:
        """The decoder for live previews, or None when its file is absent or unusable (said once in the log:
        the preview falls back to the cheap one)."""
        try:
            return self.get(vae_kind, "decoder", device)
        except CheckpointError as e:
            if str(e) not in self._noted:
                self._noted.add(str(e))
                log.warning("Live preview: %s. Showing the cheap approximation instead.", e)
            return None


@torch.no_grad()
def decode(decoder: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """(N, 4, h, w) scaled latents -> (N, 3, 8h, 8w) pixels in [-1, 1] (fp32, on the CPU), one at a time."""
    param = next(decoder.parameters())
    # channels-last inputs make the convolutions ~20% faster on a CPU (oneDNN's preferred layout)
    out = [decoder(z[None].to(param.device, param.dtype).contiguous(memory_format=torch.channels_last))
           .float().cpu().contiguous() for z in latents]
    return torch.cat(out).clamp(-1.0, 1.0)


@torch.no_grad()
def encode(encoder: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) pixels in [-1, 1] -> (N, 4, H/8, W/8) scaled latents (fp32), one at a time."""
    param = next(encoder.parameters())
    return torch.cat([encoder(x[None].to(param.device, param.dtype).contiguous(memory_format=torch.channels_last))
                      .float().contiguous() for x in pixels])
