"""The U-Net through OpenVINO on the CPU: an optional backend (Settings → Optimizations → U-Net backend).

OpenVINO runs the same U-Net graph with its own CPU kernels. The model is converted once per checkpoint (the
`openvino` package traces the PyTorch U-Net; about a minute for SD 1.5 on 2 cores, with a progress line) and
saved as OpenVINO IR under DATA/cache/openvino, keyed by the checkpoint's SHA-256, so later loads only read and
compile it (seconds; OpenVINO's own compiled-model cache sits beside it). The IR has dynamic batch, size and
prompt length, so a new size or a longer prompt needs nothing more. Weights are stored in 16 bits when every
one is exactly a 16-bit number (a float16 checkpoint: lossless), else in 32 bits.

What it does not cover runs on PyTorch as before, call by call or job by job: latent sides that are not a
multiple of 8 (image sides not a multiple of 64), a U-Net changed by a LoRA
(the IR holds the file's weights; see `eligible`), low-memory mode, and other devices than the CPU. An
interrupt lands at the end of the running U-Net call instead of within it (a few seconds at 512x512 on a CPU).
The compiled model holds its own copy of the weights beside PyTorch's: a 512x512 SD 1.5 job peaked at 11.3 GB of
RSS against 6.6 GB on PyTorch (bench/README.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from tqdm import tqdm

from modules import offline

offline.block_statistics_modules()  # before any `import openvino` below: it would send usage statistics
log = logging.getLogger(__name__)

FORMAT_VERSION = "1"  # part of the cache key: bump when what is traced changes
# The backend setting's OpenVINO choices and the precision each computes in: f32 gives PyTorch's images to within
# rounding; bf16 (CPUs with AVX-512 BF16 or AMX do it in hardware) is about twice as fast and not exact.
PRECISIONS = {"OpenVINO": "f32", "OpenVINO bf16": "bf16"}


def available() -> str | None:
    """None when the `openvino` package can be used, else why not (for the page and the log)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "the OpenVINO U-Net backend needs the `openvino` package: pip install openvino"
    return None


ADDED = ("text_embeds", "time_ids")  # SDXL's extra U-Net inputs (added_cond_kwargs), in the order they are traced


def added_widths(unet: torch.nn.Module, time_ids: int) -> dict[str, int] | None:
    """The widths of the extra inputs of a U-Net that takes SDXL's (`time_ids`: how many its family passes: 6 for
    SDXL base, 5 for the refiner), None for one that takes none."""
    if unet.config.addition_embed_type is None:
        return None
    if unet.config.addition_embed_type != "text_time":
        raise ValueError(f"U-Nets with {unet.config.addition_embed_type!r} inputs are not covered")
    pooled = unet.add_embedding.linear_1.in_features - time_ids * unet.config.addition_time_embed_dim
    return {"text_embeds": pooled, "time_ids": time_ids}


class _Traceable(torch.nn.Module):
    """The U-Net as a function of plain tensors, which is what is traced: sample, timestep, context, and for SDXL
    the pooled text vector and the time ids."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, *added: torch.Tensor
                ) -> torch.Tensor:
        extra = {"added_cond_kwargs": dict(zip(ADDED, added))} if added else {}
        return self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False, **extra)[0]


def _fits_in_16_bits(unet: torch.nn.Module) -> bool:
    return all(torch.equal(p, p.to(torch.float16).to(p.dtype)) for p in unet.parameters())


class OpenVinoUNet(torch.nn.Module):
    """Called as the Denoiser calls the diffusers U-Net: (sample, timestep, encoder_hidden_states) -> .sample.
    What the compiled model does not cover is passed to the PyTorch U-Net."""

    def __init__(self, compiled, unet: torch.nn.Module, added: bool = False, precision: str = "f32"):
        super().__init__()
        self.precision = precision  # what OpenVINO computes in (PRECISIONS)
        self._added = added  # converted with SDXL's extra inputs
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        self._pytorch = [unet]  # in a list: not a registered submodule, so it is not moved or hooked with this one
        self.config = unet.config
        self.calls = 0  # calls OpenVINO answered (the tests and the benchmark read it)

    @property
    def pytorch_unet(self) -> torch.nn.Module:
        """The PyTorch U-Net behind it, which answers what OpenVINO does not cover."""
        return self._pytorch[0]

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def covers(self, sample: torch.Tensor, kwargs: dict) -> bool:
        added = kwargs.get("added_cond_kwargs") or {}
        return (sample.device.type == "cpu" and (set(added) == set(ADDED) if self._added else not added)
                and sample.shape[-1] % 8 == 0 and sample.shape[-2] % 8 == 0
                and set(kwargs) <= {"encoder_hidden_states", "return_dict", "added_cond_kwargs"})

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs):
        if not self.covers(sample, kwargs):
            return self.pytorch_unet(sample, timestep, **kwargs)
        context = kwargs["encoder_hidden_states"]
        t = timestep.to(torch.float32).expand(sample.shape[0]).contiguous()
        inputs = [sample.to(torch.float32).contiguous().numpy(), t.numpy(),
                  context.to(torch.float32).contiguous().numpy()]
        if self._added:
            added = kwargs["added_cond_kwargs"]
            inputs += [added[name].to(torch.float32).contiguous().numpy() for name in ADDED]
        with self._lock:  # one infer request; the job worker is its only caller, the lock makes sure
            out = self._request.infer(inputs)[0]
            self.calls += 1
        return UNet2DConditionOutput(sample=torch.from_numpy(np.array(out, copy=True)))


class OpenVinoModels:
    """Converted U-Nets on disk (DATA/cache/openvino), compiled on request. The compiled model is the loaded
    model's to keep (`LoadedModel.openvino`), so it is freed with it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()  # one conversion at a time

    def ir_path(self, sha256: str, unet: torch.nn.Module) -> Path:
        """Where the converted U-Net of the checkpoint with this SHA-256 is kept."""
        import openvino as ov
        version = ov.__version__.split("-")[0]
        return self.folder / f"unet-{sha256[:16]}-{unet.config.in_channels}ch-v{FORMAT_VERSION}-ov{version}.xml"

    def compile(self, sha256: str, unet: torch.nn.Module, progress: Callable[[str], None] = lambda _: None,
                added: dict[str, int] | None = None, precision: str = "f32") -> OpenVinoUNet:
        """The compiled U-Net of the checkpoint with this SHA-256 (`unet`: its PyTorch U-Net, unchanged by any
        network; `added`: the widths of SDXL's extra inputs, see added_widths), converted first if it never was.
        `progress(text)` says which stage runs (the console shows a bar of the stages); `precision`: what OpenVINO
        computes in, "f32" or "bf16" (the same converted file serves both)."""
        import openvino as ov
        path = self.ir_path(sha256, unet)
        with self._lock:
            converting = not path.is_file()
            with tqdm(total=3 if converting else 1, desc="OpenVINO U-Net", unit="stage", disable=None) as bar:
                if converting:
                    self._convert(unet, path, progress, bar, added)
                progress("Compiling the U-Net for OpenVINO")
                started = time.perf_counter()
                core = ov.Core()
                if precision == "f32":
                    # OpenVINO's compiled-model cache. Not for bf16: on a CPU with AMX (a Xeon whose OpenVINO also
                    # lists FP16), a bf16 U-Net compiled with the cache on answered NaN for every input, and the
                    # same compile without it answered the right numbers (OpenVINO 2026.4.1).
                    core.set_property({"CACHE_DIR": str(self.folder / "compiled")})
                compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision})
                bar.update(1)
            log.info("OpenVINO U-Net compiled in %.1f s (%s)", time.perf_counter() - started, path.name)
            return OpenVinoUNet(compiled, unet, added is not None, precision)

    def _convert(self, unet: torch.nn.Module, path: Path, progress: Callable[[str], None], bar: tqdm,
                 added: dict[str, int] | None) -> None:
        import openvino as ov
        progress("Converting the U-Net for OpenVINO (once per checkpoint, about a minute)")
        started = time.perf_counter()
        width = unet.config.cross_attention_dim
        example = [torch.randn(2, unet.config.in_channels, 8, 8), torch.tensor([500.0, 500.0]),
                   torch.randn(2, 77, width)]
        shapes = [ov.PartialShape([-1, unet.config.in_channels, -1, -1]), ov.PartialShape([-1]),
                  ov.PartialShape([-1, -1, width])]
        for name in ADDED if added else ():
            example.append(torch.randn(2, added[name]) if name == "text_embeds" else torch.full((2, added[name]), 64.0))
            shapes.append(ov.PartialShape([-1, added[name]]))
        with torch.inference_mode(), warnings.catch_warnings():
            # tracing warns about shape checks it records as constants: those hold for every latent it is given
            # (sides a multiple of 8, see OpenVinoUNet.covers), so the warnings would only worry the user
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            model = ov.convert_model(_Traceable(unet), example_input=tuple(example), input=shapes)
        bar.update(1)
        progress("Saving the converted U-Net")
        compress = _fits_in_16_bits(unet)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.stem + ".partial.xml")
        try:
            ov.save_model(model, str(partial), compress_to_fp16=compress)
            os.replace(partial.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(partial, path)
            bar.update(1)
        finally:
            partial.unlink(missing_ok=True)
            partial.with_suffix(".bin").unlink(missing_ok=True)
        log.info("U-Net converted for OpenVINO in %.1f s, weights in %s bits: %s", time.perf_counter() - started,
                 16 if compress else 32, path)
