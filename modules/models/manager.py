"""The one owner of loaded weights: loads, switches and places checkpoints and VAEs.

A switch reads, checks and builds the new model completely before the current one is released, so a
corrupt, truncated, malicious or unsupported file leaves the loaded model in place and usable.
"""

from __future__ import annotations

import gc
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from typing import Callable

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from tqdm import tqdm
from transformers import CLIPTokenizer

from modules import devices
from modules.hashing import PROGRESS_AFTER_S
from modules.models import (checkpoint_file, depth, families, hypernetwork, loader, lora, low_memory, openvino_unet,
                            taesd, user_metadata, vae_family)
from modules.models.checkpoint_file import CheckpointError, NotEnoughMemory
from modules.models.embeddings import EmbeddingRegistry, EmbeddingVocabulary
from modules.models.family import TEXT_ENCODER_PREFIXES, UNET_PREFIX, BuiltModel, ModelConfig, ModelFamily
from modules.models.prompt_encoder import PromptEncoder
from modules.models.low_memory import Fp8
from modules.models.registry import CheckpointInfo, CheckpointRegistry, VaeInfo, VaeRegistry
from modules.paths import TOKENIZER_DIR

log = logging.getLogger(__name__)

LOAD_STEPS = 4  # a load's progress bar: read the file, build the model, place it on the device, the VAE
# What a load needs free beside a new model's weights to keep the current model while reading it (see
# ModelManager._crowded): the readers' buffers, the modules' own objects, what the rest of the process allocates.
READ_MARGIN = 1 << 30
# What a load needs free beyond a new model's weights to be read at all (see ModelManager._crowded): the readers'
# buffers and the modules' objects; a job's own peak is checked before it samples (generation/memory.py).
FIT_MARGIN = 256 << 20


@dataclass
class LoadedModel:
    info: CheckpointInfo
    config: ModelConfig
    unet: UNet2DConditionModel
    vae: AutoencoderKL  # the VAE in use: the checkpoint's own or an external one
    text: PromptEncoder
    alphas_cumprod: torch.Tensor
    plan: devices.DevicePlan
    vae_config: dict
    vae_info: VaeInfo | None = None  # the external VAE in use, if any
    vae_sha256: str | None = None
    vae_warning: str | None = None  # the external VAE says it is for another kind of model (vae_family)
    own_vae: AutoencoderKL | None = field(default=None, repr=False)  # parked on the CPU while an external VAE is used
    load_seconds: float = 0.0
    networks: lora.WeightPatcher | None = field(default=None, repr=False)  # LoRA merged into the weights
    hypernets: hypernetwork.HypernetworkHooks | None = field(default=None, repr=False)  # hooked before to_k/to_v
    attention: str = ""  # the U-Net's attention implementation (see optimizations.apply); "": diffusers' own (SDP)
    batch_cond_uncond: bool = True  # prompt and negative prompt in one U-Net batch
    low_memory: bool = False  # weights stored in 16 bits, cast layer by layer as they run (models/low_memory.py)
    fp8: Fp8 = Fp8()  # A1111's FP8 weight: convolutions and linear layers rest in FP8
    openvino: openvino_unet.OpenVinoUNet | None = field(default=None, repr=False)  # compiled when first asked for
    use_openvino: bool = False  # this job's U-Net calls go to `openvino` (see ModelManager.use_unet_backend)
    unet_autocast: torch.dtype | None = None  # this job's U-Net computes in this type (torch.autocast on the CPU)
    depth_model: torch.nn.Module | None = field(default=None, repr=False)  # the SD 2 depth model's MiDaS (float32)
    parked_text: low_memory.ParkedWeights | None = field(default=None, repr=False)  # low-memory mode: see park_text
    tiling: bool = False  # this job's convolutions pad circularly (see use_tiling)

    def __post_init__(self) -> None:
        if self.networks is None:
            self.networks = lora.WeightPatcher(self.unet, self.text.lora_parts)
        if self.hypernets is None:
            self.hypernets = hypernetwork.HypernetworkHooks(self.unet)

    @property
    def family(self) -> ModelFamily:
        return self.config.family

    @property
    def denoising_unet(self) -> torch.nn.Module:
        """What the sampler calls: the PyTorch U-Net, or its OpenVINO counterpart when this job uses it."""
        return self.openvino if self.use_openvino and self.openvino is not None else self.unet

    @property
    def prediction_type(self) -> str:
        return self.config.prediction_type or "epsilon"

    @property
    def device(self) -> torch.device:
        return self.plan.device

    def text_ready(self) -> None:
        """The text encoders' weights in memory (read back if parked): before they run or a LoRA changes them."""
        if self.parked_text is not None:
            self.parked_text.ready()

    def park_text(self) -> None:
        """Low-memory mode, once a pass's prompts are encoded: free the text encoders' weights until the next
        prompt (read back by text_ready), unless a LoRA has changed them (what is parked is the checkpoint's
        values; the change would be lost). Their kept LoRA backups, equal to those values, are dropped too."""
        if self.parked_text is None or self.networks.text_changed:
            return
        self.networks.drop_backups(text_only=True)
        self.parked_text.park()

    def use_tiling(self, on: bool) -> None:
        """A1111's Tiling for this job: every 2-D convolution of the U-Net and of the VAE in use pads its input by
        wrapping around the opposite edge (`padding_mode` "circular") instead of with zeros, so the picture's
        right edge continues its left and its bottom its top. Set at every job, so a VAE swapped in since
        follows it, and a job without Tiling gets zeros back. As in A1111, only layers that are exactly
        torch.nn.Conv2d change (a convolution that pads by hand, as the VAE's downsampler does, stays as it is).
        The text encoders have no convolutions; TAESD is not changed (nor in A1111), nor is the depth model's
        MiDaS (A1111 changes its plain Conv2d layers too)."""
        mode = "circular" if on else "zeros"
        for module in (self.unet, self.vae):
            for layer in module.modules():
                if type(layer) is torch.nn.Conv2d:
                    layer.padding_mode = mode
        self.tiling = on

    def upcast_vae(self) -> None:
        """Switch the VAE in use to fp32 (after fp16 produced NaNs)."""
        self.vae.to(torch.float32)

    def release(self) -> None:
        """Free this model's weights now, even while something still holds this object (a job that switched to
        its refiner mid-batch does): every module moves to the meta device, which keeps shapes and frees the
        memory, and the LoRA backups are dropped. The object stays readable (its info, config, the embeddings
        its prompts used); running it raises. Called by the manager when another model replaces it."""
        for module in (self.unet, self.vae, self.own_vae, self.text.text_model, self.depth_model):
            if module is not None:
                module.to("meta")
                low_memory.drop_fp16_copies(module)
        if self.networks is not None:
            self.networks.forget()
        if self.hypernets is not None:
            self.hypernets.forget()
        if self.parked_text is not None:
            self.parked_text.close()
        self.openvino, self.use_openvino = None, False

    @property
    def released(self) -> bool:
        return next(self.unet.parameters()).is_meta

    @property
    def in_ram(self) -> bool:
        """Whether the weights are in the CPU's memory (a CPU model, or one kept aside from a GPU)."""
        return next(self.unet.parameters()).device.type == "cpu"

    def move(self, device: torch.device) -> None:
        """Move the weights to `device`: to the CPU while the model is kept loaded but not in use
        (sd_checkpoints_keep_in_cpu on a GPU), back to the plan's device when it is used again. The LoRA backups are
        on the CPU already, and `Module.to` keeps each Parameter object, so what the patcher holds stays valid; the
        hypernetworks' modules are on the old device, so they are dropped (read again by the next job naming them).
        The checkpoint's own VAE, parked while an external one is used, stays on the CPU."""
        for module in (self.unet, self.vae, self.text.text_model, self.depth_model):
            if module is not None:
                module.to(device)
        self.hypernets.forget()

    def weight_bytes(self) -> int:
        """Bytes this model's weights hold in memory (0 once released)."""
        return sum(low_memory.weight_bytes(module) for module in (self.unet, self.vae, self.own_vae,
                                                                   self.text.text_model, self.depth_model)
                   if module is not None)


@dataclass
class ExtraNetworksUse:
    """What one job's extra networks did: notes for the user and the hashes for the infotext."""
    warnings: list[str] = field(default_factory=list)
    lora_hashes: list[tuple[str, str]] = field(default_factory=list)  # (name as written, 12-hex hash)
    hypernet_hashes: list[tuple[str, str]] = field(default_factory=list)  # (name, 10-hex hash)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


class ModelManager:
    def __init__(self, checkpoints: CheckpointRegistry, vaes: VaeRegistry, plan: devices.DevicePlan,
                 default_sd1_config: Path, loras: lora.LoraRegistry | None = None,
                 embeddings: EmbeddingRegistry | None = None, taesd_models: taesd.TaesdModels | None = None,
                 hypernetworks: hypernetwork.HypernetworkRegistry | None = None,
                 openvino_models: openvino_unet.OpenVinoModels | None = None, midas_dir: Path | None = None,
                 park_dir: Path | None = None, memory_limit: int | None = None):
        self.checkpoints = checkpoints
        self.memory_limit = memory_limit  # --memory-limit in bytes: what this process may hold (see _crowded)
        self.vaes = vaes
        self.loras = loras if loras is not None else lora.LoraRegistry((), checkpoints.hashes)
        self.embeddings = embeddings if embeddings is not None else EmbeddingRegistry((), checkpoints.hashes)
        self.hypernetworks = hypernetworks if hypernetworks is not None else hypernetwork.HypernetworkRegistry(
            (), checkpoints.hashes)
        self.plan = plan
        # the TAESD files (models/VAE-taesd; by default the folder beside the last checkpoint folder)
        self.taesd = taesd_models if taesd_models is not None else taesd.TaesdModels(
            Path(checkpoints.folders[-1]).parent / "VAE-taesd" if checkpoints.folders else Path("VAE-taesd"))
        self.default_sd1_config = default_sd1_config
        # DATA/cache (by default the data folder of the last checkpoint folder, DATA/models/Stable-diffusion)
        cache = Path(checkpoints.folders[-1]).parent.parent / "cache" if checkpoints.folders else Path("cache")
        # converted U-Nets for the OpenVINO backend (DATA/cache/openvino)
        self.openvino_models = openvino_models if openvino_models is not None else openvino_unet.OpenVinoModels(
            cache / "openvino")
        # MiDaS for SD 2 depth checkpoints saved without it (models/midas, as in A1111)
        self.midas_dir = midas_dir if midas_dir is not None else (
            Path(checkpoints.folders[-1]).parent / "midas" if checkpoints.folders else Path("midas"))
        # low-memory mode's parked text encoder weights (DATA/cache/parked; unnamed files, see ParkedWeights)
        self.park_dir = park_dir if park_dir is not None else cache / "parked"
        self.tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
        self._lock = threading.RLock()
        self.current: LoadedModel | None = None
        # other checkpoints still loaded (the setting sd_checkpoints_limit), least recently used first: a switch
        # back to one is instant; loads and jobs short of memory release them first (see load, release_kept)
        self.kept: list[LoadedModel] = []
        self._header_configs: dict[tuple[str, float], ModelConfig | None] = {}
        self._missing_preferred: set[tuple[Path, str]] = set()  # (checkpoint, preferred VAE) said to be missing

    # --- checkpoints -------------------------------------------------------------------------
    def config_of(self, info: CheckpointInfo) -> ModelConfig | None:
        """The checkpoint's config (family, default size): the loaded model's, else read from the file's header
        (cached per file and modification time); None when the file does not say (a .ckpt)."""
        for model in (self.current, *self.kept):
            if model is not None and model.info.filename == info.filename:
                return model.config
        try:
            key = (str(info.filename), Path(info.filename).stat().st_mtime)
        except OSError:
            return None
        if key not in self._header_configs:
            try:
                config = families.detect_from_header(Path(info.filename), self.default_sd1_config)
            except CheckpointError:
                config = None
            self._header_configs[key] = config
        return self._header_configs[key]

    def default_size(self, info: CheckpointInfo) -> tuple[int, int]:
        """(width, height) the checkpoint's family was trained at (see `config_of`); 512x512 when the file does
        not say (a .ckpt)."""
        config = self.config_of(info)
        return config.default_size if config else (512, 512)

    def read(self, info: CheckpointInfo, bar: tqdm | None = None, low: bool = False,
             fp8: Fp8 = Fp8()) -> tuple[BuiltModel, float]:
        """Read and build a checkpoint on the CPU without touching the loaded model (`bar`: a load's progress,
        one step for the read and one for the build; `low`: in low-memory mode, see `low_memory`; `fp8`: see
        fp8_applies)."""
        start = time.perf_counter()
        path = info.filename
        sd = checkpoint_file.read_state_dict(path, *self._read_types(low, fp8))
        if bar is not None:
            bar.update(1)
        config = families.detect(path, sd, checkpoint_file.read_metadata(path), self.default_sd1_config)
        built = loader.build(path, sd, config)
        del sd
        if bar is not None:
            bar.update(1)
        return built, time.perf_counter() - start

    def _read_types(self, low: bool, fp8: Fp8 = Fp8()) -> tuple[torch.dtype | None, tuple[str, ...]]:
        """(cast, keep) for checkpoint_file.read_state_dict: every part in one dtype (the CPU's fp32) is converted
        as it is read, not after (peak memory); see there for `keep`. With FP8 weights computing in float32, a
        16-bit file's U-Net is kept in its type too: each layer is rounded to FP8 from it, the same values
        without a float32 copy of the whole U-Net on the way."""
        plan = self.plan
        dtype = low_memory.STORAGE if low else plan.unet_dtype if plan.unet_dtype == plan.vae_dtype else None
        if not self._text_in_file_type(low):
            return dtype, ()
        return dtype, TEXT_ENCODER_PREFIXES + ((UNET_PREFIX,) if fp8.on else ())

    def _crowded(self, info: CheckpointInfo, low: bool, reserve: int = 0, aside: int = 0, fp8: Fp8 = Fp8()
                 ) -> tuple[str, LoadedModel] | None:
        """Why `info` cannot be read while the models loaded stay in memory, with the one to release first (the
        least recently used of those kept, the current one last), or None when it can be read beside them;
        NotEnoughMemory when it does not fit even with all of them released (nothing is released then).
        A load keeps the current model until the new one is built (a file that fails leaves it usable), which
        holds both at once. Where the models live in RAM (a CPU; MPS shares it), the new one's weights are
        set against the RAM the system has available, or what --memory-limit leaves: with less than READ_MARGIN
        to spare, holding them all would push the machine into swap or the out-of-memory killer (two SDXL models
        take 24 GB on a CPU), so they are released first, one at a time; with less than the weights and FIT_MARGIN
        even counting their memory and free swap, the read would end the same way, so it is refused.
        (macOS is only told to release: its compressed memory is not in what the system calls available.) A
        GPU reads into RAM and frees the card's model before placing the new one: only the models kept in RAM
        beside it (sd_checkpoints_keep_in_cpu) are weighed, with `aside` (the model in use, when it is to be kept in
        RAM too), and released when the read needs their room. `reserve`: what a running job will need beside
        the models once this one is read (its sampling and decode, see ModelManager.load), when more than
        READ_MARGIN."""
        cpu = torch.device("cpu")
        gpu = self.plan.device.type == "cuda"
        held = [m for m in self.kept if not m.released]
        if gpu:
            held = [m for m in held if m.in_ram]
            if not held and not aside:
                return None
        elif self.current is not None and not self.current.released:
            held.append(self.current)
        free = self._ram_free()
        cast, keep = self._read_types(low, fp8)
        least, need = checkpoint_file.read_size(info.filename, cast, keep)  # differ only for a pickle
        if (held or aside) and free >= need + aside + max(READ_MARGIN, reserve):
            return None
        held_bytes = sum(m.weight_bytes() for m in held)
        swap = devices.free_swap(cpu) if self.memory_limit is None else 0
        names = " and ".join(m.info.name for m in held)
        if gpu and not held:  # only the model in use, which would be kept in RAM: it is not kept
            current = self.current.info.name if self.current is not None else "the model in use"
            return (f"{info.name} needs {_size(need)} of RAM to be read and {_size(free)} is free: {current} is "
                    "released as it is replaced instead of kept in RAM"), None
        if not gpu and least + FIT_MARGIN > free + held_bytes + swap and sys.platform != "darwin":
            where = "under --memory-limit" if self.memory_limit is not None else "in RAM" + (
                " and swap" if swap else "")
            advice = ""
            if not low and self.plan.unet_dtype == torch.float32 and cast is not None and cast.itemsize > 2:
                advice = (f" Low-memory mode (Settings > Optimizations > low_memory, or --medvram) keeps its weights "
                          f"in 16 bits: {_size(checkpoint_file.read_size(info.filename, low_memory.STORAGE)[1])}.")
            raise NotEnoughMemory(f"{info.name} does not fit in memory: its weights take {_size(least)} once read, "
                                  f"and {_size(free + held_bytes + swap)} is free {where}"
                                  f"{f' with {names} released' if held else ''}.{advice}")
        if not held:
            return None
        return (f"{info.name} needs {_size(need)} and {_size(free)} is free beside {names}"
                f"{' (--memory-limit)' if self.memory_limit is not None else ''}: releasing {held[0].info.name} "
                "before reading it"), held[0]

    def _ram_free(self) -> int:
        """The RAM the system has available, or what --memory-limit leaves, if less."""
        cpu = torch.device("cpu")
        free = devices.free_memory(cpu)
        if self.memory_limit is not None:
            free = min(free, max(0, self.memory_limit - devices.process_memory(cpu)))
        return free

    def low_memory_applies(self, info: CheckpointInfo, mode: str) -> bool:
        """Whether `info` loads in low-memory mode under the setting `mode` (see low_memory.wanted): only where the
        model computes in float32 (a CPU, or --no-half), since its point is storing weights in 16 bits."""
        if mode == "Off" or self.plan.unet_dtype != torch.float32:
            return False
        config = self.config_of(info) if mode == "SDXL only" else None
        return low_memory.wanted(mode, config.family.name if config else None)

    def fp8_applies(self, info: CheckpointInfo, mode: str, fp16_copies: bool = False) -> Fp8:
        """How `info` keeps FP8 weights under A1111's settings fp8_storage (`mode`) and cache_fp16_weight
        (`fp16_copies`); never on Apple's MPS, as in A1111 (it has no FP8)."""
        if mode == "Disable" or self.plan.device.type == "mps":
            return Fp8()
        config = self.config_of(info) if mode == "Enable for SDXL" else None
        if not low_memory.fp8_wanted(mode, config.family.name if config else None):
            return Fp8()
        return Fp8(True, fp16_copies)

    def _text_in_file_type(self, low: bool) -> bool:
        """Whether the text encoders stay in their file's 16-bit type while computing in float32 (see
        low_memory): outside low-memory mode (which stores every part in 16 bits), where they compute in
        float32."""
        return not low and self.plan.unet_dtype == torch.float32

    def _place_text(self, module: torch.nn.Module, low: bool, fp8: Fp8) -> torch.nn.Module:
        """The text encoders on the device: as `_place`, or, from a 16-bit file, in its type (see low_memory)."""
        storage = low_memory.file_storage(module) if self._text_in_file_type(low) and not fp8.on else None
        if storage is None:
            return self._place(module, self.plan.unet_dtype, low, fp8)
        return low_memory.store(module.to(self.plan.device), self.plan.unet_dtype, storage, exact=True)

    def _place(self, module: torch.nn.Module, dtype: torch.dtype, low: bool,
               fp8: Fp8 = Fp8()) -> torch.nn.Module:
        """`module` on the device in `dtype`, or (low-memory mode) with its weights stored in 16 bits; with `fp8`
        on, its convolutions and linear layers rest in FP8, rounded from `dtype` (A1111 rounds the model it has
        made half, or float32 with --no-half)."""
        if low:
            return low_memory.store(module.to(self.plan.device), dtype, fp8=fp8.on, fp16_copies=fp8.fp16_copies)
        if fp8.on:  # each tensor converted on its own, on the CPU where it was read (see _read_types); then moved
            return low_memory.store(module, dtype, dtype, fp8=True, fp16_copies=fp8.fp16_copies).to(self.plan.device)
        return module.to(self.plan.device, dtype)

    def load(self, info: CheckpointInfo, vae_choice: str = "Automatic", release_first: bool = False,
             low: bool = False, limit: int = 1, keep_in_cpu: bool = True, vae_overrides: bool = True,
             reserve: int = 0, fp8: Fp8 = Fp8()) -> LoadedModel:
        """Load `info` in place of the current model. The current one is released once the new one is read and
        built, so a file that cannot be loaded leaves it usable; with `release_first` (a job switching to its
        refiner and back, where holding both would double the memory), or when the two would not fit in memory
        together (`_crowded`), it is released before reading; a file that would not fit even then is refused
        (NotEnoughMemory) with nothing released.
        `limit` (the setting sd_checkpoints_limit) is how many checkpoints may stay loaded: over 1, the current
        model is kept beside the new one (see `kept`; on a GPU moved to the CPU with `keep_in_cpu`) instead of
        released, `release_first` included (holding both is what the setting asks for), unless it is in
        low-memory mode or the new one is, whose point is the memory. Once the new one is read, the least recently
        used kept models are released when there would be more than `limit` (a file that fails costs none); when
        memory is short, before the read, they are released before the current one. `reserve`: what a running job
        needs beside the models after this load (a refiner's switch keeping the base: its sampling and decode).
        `fp8`: see fp8_applies (a 16-bit file's U-Net is read in its type, see _read_types; each layer is rounded to
        FP8 as it is placed).
        The file's SHA-256 is not waited for: it is computed in the background (CheckpointRegistry.hash_later),
        and the title gains its `[hash]` when it is known. A load that takes over a second shows a console bar."""
        with self._lock, tqdm(total=LOAD_STEPS, desc=f"Loading {info.name}", unit="step", disable=None,
                              leave=False, delay=PROGRESS_AFTER_S) as bar:
            log.info("Loading weights from %s", info.filename)
            current = self.current
            keep_current = (limit > 1 and current is not None and not current.released and not current.low_memory
                            and not low and current.info.filename != info.filename)
            if release_first and not keep_current:
                # With the trim: reusing the freed heap instead made an SDXL switch 3.5 s faster but its peak
                # up to 2 GB higher (bench/README.md), and this is the path for when memory is short.
                self._release_current()
            released = None
            # a GPU keeping the model in use in RAM (keep_in_cpu): its weights join what is in RAM
            aside = current.weight_bytes() if keep_current and keep_in_cpu and self.plan.device.type == "cuda" else 0
            # NotEnoughMemory here leaves every model as it is
            while (crowded := self._crowded(info, low, reserve, aside, fp8)) is not None:
                why, model = crowded
                if model is None:
                    log.info("%s", why)
                    keep_current, aside = False, 0
                    continue
                if model is current:
                    log.warning("%s", why)
                    released, keep_current = current.info.name, False
                    self._release_current()
                    break
                self._release_kept(model, why)  # a kept model: the cache the setting asked for, given up for the load
            if low and self.plan.device.type == "cpu":
                devices.map_large_blocks()
            try:
                built, seconds = self.read(info, bar, low, fp8)
            except CheckpointError as e:
                if released:
                    raise CheckpointError(f"{e} ({released} was released first to make room for it; a job that "
                                          "uses it loads it again)") from None
                raise
            start = time.perf_counter()
            self.release_kept(limit - 1 - keep_current)  # over the limit: the least recently used go
            if keep_current and self.current is current:
                self._set_aside(current, keep_in_cpu)
            else:
                self._drop_current()  # only now: the new model is complete (the trim at the end frees its memory)
            plan = self.plan
            unet = self._place(built.unet, plan.unet_dtype, low, fp8)
            text_model = self._place_text(built.text_encoder, low, fp8)
            vae = self._place(built.vae, plan.vae_dtype, low)
            config = built.config
            if config.prediction_type is None:
                v = loader.probe_v_prediction(unet)
                config = config.with_prediction("v_prediction" if v else "epsilon")
                log.info("No config or marker says whether %s predicts v; probing the U-Net says %s",
                         info.name, config.prediction_type)
            model = LoadedModel(
                info=info, config=config, unet=unet, vae=vae,
                text=config.family.prompt_encoder(self.tokenizer, text_model),
                alphas_cumprod=built.alphas_cumprod, plan=plan, vae_config=built.vae_config, low_memory=low, fp8=fp8,
                depth_model=built.depth_model.to(plan.device) if built.depth_model is not None else None,
                parked_text=low_memory.ParkedWeights(text_model, self.park_dir) if low else None,
            )
            self.checkpoints.hash_later(info)  # in the background: the first job's sampling overlaps it
            self.current = model
            bar.update(1)
            self._apply_vae(model, vae_choice, vae_overrides)
            bar.update(1)
            devices.empty_cache(plan.device)  # the file's 16-bit tensors, read and cast one at a time, are freed
            model.load_seconds = seconds + time.perf_counter() - start
            kept = None if low or fp8.on else low_memory.file_storage(text_model)
            text_storage = f", text encoders kept in the file's {str(kept).removeprefix('torch.')}" if kept else ""
            log.info("Model %s loaded in %.1fs (%s, %s%s%s%s, config %s)", info.title, model.load_seconds,
                     config.label, plan.describe, ", low-memory mode: weights stored in fp16" if low else "",
                     f", {fp8.describe()}" if fp8.on else "", text_storage, config.yaml_path.name)
            return model

    def unload(self) -> None:
        """Release every loaded model: the current one and those kept."""
        with self._lock:
            self.release_kept(0)
            self._release_current()

    def _release_current(self) -> None:
        if self.current is None:
            return
        self._drop_current()
        gc.collect()
        devices.empty_cache(self.plan.device)

    def release_kept(self, keep: int = 0, on: torch.device | None = None) -> int:
        """Release the least recently used of the models kept loaded beside the current one until at most `keep`
        remain; `on`: only those whose weights are on that device (a job short of its memory releases those).
        Returns how many were released."""
        with self._lock:
            candidates = [m for m in self.kept if on is None or m.in_ram == (on.type == "cpu")]
            extra = max(0, len(candidates) - max(0, keep))
            for model in candidates[:extra]:
                self._release_kept(model)
            return extra

    def _release_kept(self, model: LoadedModel, why: str | None = None) -> None:
        log.info("%s", why or f"Releasing {model.info.name} (kept loaded beside the model in use)")
        self.kept.remove(model)
        where = torch.device("cpu") if model.in_ram else self.plan.device
        model.release()
        gc.collect()
        devices.empty_cache(where)

    def _set_aside(self, model: LoadedModel, keep_in_cpu: bool) -> None:
        """Keep `model`, no longer the current one, loaded (on a GPU, in RAM with `keep_in_cpu`); released instead
        when it cannot be moved there."""
        self.current = None
        if keep_in_cpu and self.plan.device.type != "cpu":
            try:
                model.move(torch.device("cpu"))
            except Exception:  # noqa: BLE001 - out of RAM halfway: nothing of it is kept
                log.warning("Could not move %s to RAM to keep it loaded; releasing it", model.info.name,
                            exc_info=True)
                model.release()
                gc.collect()
                devices.empty_cache(self.plan.device)
                return
            devices.empty_cache(self.plan.device)
        self.kept.append(model)

    def _take_kept(self, info: CheckpointInfo, low: bool, limit: int, keep_in_cpu: bool,
                   fp8: Fp8 = Fp8()) -> LoadedModel | None:
        """The kept model of `info` made the current one, the current one kept in its place (set aside first, so a
        GPU never holds both when they wait in RAM) or released when `limit` leaves it no room; None when none is
        kept in this mode (a kept one in another mode, or with other FP8 weights, is released: the load that follows
        replaces it)."""
        model = next((m for m in self.kept if m.info.filename == info.filename), None)
        if model is None:
            return None
        if model.low_memory != low or model.fp8 != fp8:
            self._release_kept(model)
            return None
        self.kept.remove(model)
        current = self.current
        if current is not None:
            gpu_aside = keep_in_cpu and self.plan.device.type == "cuda"  # it would join the RAM the kept ones hold
            if limit > 1 and not current.released and not current.low_memory and (
                    not gpu_aside or self._ram_free() >= current.weight_bytes() + READ_MARGIN):
                self.release_kept(limit - 2)
                self._set_aside(current, keep_in_cpu)
            else:
                self._release_current()
        if model.in_ram and self.plan.device.type != "cpu":
            try:
                model.move(self.plan.device)
            except Exception:  # noqa: BLE001 - the device is full: read it again, as without the setting
                log.warning("Could not move %s back to %s; it is read again", info.name, self.plan.device,
                            exc_info=True)
                model.release()
                gc.collect()
                devices.empty_cache(self.plan.device)
                return None
        self.current = model
        log.info("Using %s again (it was kept loaded)", info.title)
        return model

    def _drop_current(self) -> None:
        """Free the current model's weights (LoadedModel.release: whoever still holds it holds no memory)."""
        if self.current is not None:
            self.current.release()
            self.current = None

    def get(self, info: CheckpointInfo, vae_choice: str = "Automatic", release_first: bool = False,
            low_memory_mode: str = "Off", limit: int = 1, keep_in_cpu: bool = True,
            vae_overrides: bool = True, reserve: int = 0, fp8_mode: str = "Disable",
            fp16_copies: bool = False) -> LoadedModel:
        """The model for `info` with the VAE `vae_choice`, in low-memory mode if the setting `low_memory_mode`
        says so for it, with FP8 weights if fp8_storage (`fp8_mode`) does (see fp8_applies), loading or switching
        only what changed (the mode or the FP8 weights changed: loaded again, from the file as A1111 does, the
        model in use released first, since what both save is memory). With `limit` over 1 (sd_checkpoints_limit),
        a model kept loaded is used again without reading anything; see `load` for the rest."""
        with self._lock:
            low = self.low_memory_applies(info, low_memory_mode)
            fp8 = self.fp8_applies(info, fp8_mode, fp16_copies)
            current = self.current
            if current is not None and current.info.filename == info.filename:
                if current.low_memory == low and current.fp8 == fp8:
                    self.release_kept(limit - 1)
                    self._apply_vae(current, vae_choice, vae_overrides)
                    return current
                release_first = True
            else:
                self.release_kept(limit - 1)  # a lowered limit: the extra ones go now
                kept = self._take_kept(info, low, limit, keep_in_cpu, fp8)
                if kept is not None:
                    self._apply_vae(kept, vae_choice, vae_overrides)
                    return kept
            return self.load(info, vae_choice, release_first, low, limit, keep_in_cpu, vae_overrides, reserve, fp8)

    def depth_estimator(self, model: LoadedModel) -> torch.nn.Module:
        """The SD 2 depth model's MiDaS: the one its file carries, else models/midas/dpt_hybrid-midas-501f0c75.pt
        (read once, kept with the model). depth.DepthModelMissing names the file when neither exists."""
        with self._lock:
            if model.depth_model is None:
                path = self.midas_dir / depth.MIDAS_FILE
                if not path.is_file():
                    raise depth.DepthModelMissing(depth.missing_message(self.midas_dir, model.info.name))
                log.info("Loading the depth model's MiDaS from %s", path)
                model.depth_model = depth.build(depth.load_midas_file(path)).to(model.device)
            return model.depth_model

    # --- extra networks ------------------------------------------------------------------------
    def use_unet_backend(self, model: LoadedModel, backend: str,
                         progress: Callable[[str], None] = lambda _text: None, merging: bool = False) -> str | None:
        """Route this job's U-Net calls to `backend` ("PyTorch", "PyTorch bf16", "OpenVINO" or "OpenVINO bf16";
        call after the job's networks are applied). OpenVINO's U-Net is converted (the first time for a checkpoint)
        and compiled here (the first time for a loaded model, or for another precision). Returns why the backend is
        not used when it was asked for (the job then runs on PyTorch in float32, as it would without the setting),
        else None. `merging`: the job merges tokens (see token_merging), which only the PyTorch U-Net does."""
        model.use_openvino = False
        model.unet_autocast = None
        if backend == "PyTorch bf16":
            why = ("it runs on the CPU only" if model.device.type != "cpu" else
                   None if devices.cpu_has_bf16() else
                   "this CPU does not compute bfloat16 in hardware (AVX-512 BF16 or AMX), so it would be slower")
            if why:
                return f"U-Net backend {backend}: {why}; this job ran as usual"
            model.unet_autocast = torch.bfloat16
            return None
        precision = openvino_unet.PRECISIONS.get(backend)
        if precision is None:
            return None
        why = openvino_unet.available() or self._openvino_does_not_cover(model) \
            or ("token merging is on (the converted U-Net does not merge)" if merging else None)
        if why:
            return f"U-Net backend {backend}: {why}; this job ran on PyTorch"
        if model.openvino is not None and model.openvino.precision != precision:
            model.openvino = None  # compiled for the other precision: compiled again from the same file
        if model.openvino is None:
            sha256 = self.checkpoints.ensure_hash(model.info)  # the converted file is named by it
            try:
                added = openvino_unet.added_widths(model.unet, len(model.text.unet_inputs(64, 64).get("time_ids", ())))
                model.openvino = self.openvino_models.compile(sha256, model.unet, progress, added, precision)
            except Exception as e:  # a failed conversion must not fail the job: PyTorch runs it
                log.exception("OpenVINO could not convert or compile %s's U-Net", model.info.name)
                return f"U-Net backend {backend}: the U-Net could not be converted ({e}); this job ran on PyTorch"
        model.use_openvino = True
        return None

    @staticmethod
    def _openvino_does_not_cover(model: LoadedModel) -> str | None:
        if model.device.type != "cpu":
            return "it runs on the CPU only"
        if model.low_memory:
            return "not in low-memory mode"
        if model.fp8.on:
            return "not with FP8 weights"
        if model.unet.config.addition_embed_type not in (None, "text_time"):
            return f"{model.family.label} U-Nets are not covered"
        if model.networks.unet_changed:
            return "a LoRA changes this job's U-Net (the converted one holds the checkpoint's weights)"
        if model.hypernets.active:
            return "a hypernetwork is applied to this job's U-Net"
        if model.tiling:
            return "Tiling is on (the converted U-Net pads with zeros)"
        return None

    def use_extra_networks(self, model: LoadedModel, tags: list, hypernet_tags: list = ()) -> ExtraNetworksUse:
        """Make `model` ready for one job's prompt: merge the LoRA its `<lora:...>` tags name (and take
        out those of the previous job), hook in the hypernetworks its `<hypernet:...>` tags name (in place of
        the previous job's), and give its text encoder the current embeddings. Unknown names
        and unreadable files become warnings, never errors."""
        with self._lock:
            use = ExtraNetworksUse()
            activations = []
            for tag in tags:
                positional, named = tag.positional, tag.named
                name = positional[0] if positional else ""
                info = self.loras.find(name) or (self.loras.refresh() and self.loras.find(name))
                if not info:
                    use.warnings.append(f"LoRA not found: {name!r} ({tag.text}); looked in "
                                        + (", ".join(str(f) for f in self.loras.folders) or "no folder"))
                    continue
                try:
                    activations.append(lora.activation_from_tag(positional, named, info))
                except ValueError:
                    use.warnings.append(f"{tag.text}: the multipliers must be numbers; the LoRA was not applied")
            model.text_ready()  # (parked in low-memory mode) a LoRA may change it, or take its change out
            use.warnings += model.networks.apply(activations)
            for act in activations:
                try:
                    use.lora_hashes.append((act.mentioned.translate(str.maketrans("", "", ":,")),
                                            act.info.shorthash(self.loras.hashes)))
                except OSError as e:
                    use.warnings.append(f"LoRA {act.mentioned!r}: could not hash the file ({e})")
            self._use_hypernetworks(model, hypernet_tags, use)
            found = self.embeddings.refresh(force=False)
            key = (id(self.embeddings), self.embeddings.version)
            if model.text.embeddings is None or model.text.embeddings.key != key:  # tokenize names once per change
                model.text.embeddings = EmbeddingVocabulary(found, model.text.tokenize,
                                                            model.text.embedding_signature, key)
            model.text.embeddings_used = {}
            return use

    def _use_hypernetworks(self, model: LoadedModel, tags: list, use: ExtraNetworksUse) -> None:
        """`<hypernet:NAME:MULT>` (MULT 1.0 when not given), in the prompt's order, hooked into `model`."""
        chain = []
        for tag in tags:
            name = tag.positional[0] if tag.positional else ""
            info = self.hypernetworks.find(name) or (self.hypernetworks.refresh() and self.hypernetworks.find(name))
            if not info:
                use.warnings.append(f"Hypernetwork not found: {name!r} ({tag.text}); looked in "
                                    + (", ".join(str(f) for f in self.hypernetworks.folders) or "no folder"))
                continue
            try:
                multiplier = float(tag.positional[1]) if len(tag.positional) > 1 else 1.0
                if not math.isfinite(multiplier):
                    raise ValueError(multiplier)
            except ValueError:
                use.warnings.append(f"{tag.text}: the multiplier must be a number; the hypernetwork was not applied")
                continue
            try:
                network, short = model.hypernets.load(info), info.shorthash(self.hypernetworks.hashes)
            except (hypernetwork.HypernetworkError, OSError) as e:
                use.warnings.append(f"Hypernetwork {name!r} was not applied: {e}")
                continue
            chain.append((network, multiplier))
            use.hypernet_hashes.append((name.translate(str.maketrans("", "", ":,")), short))
        model.hypernets.apply(chain)

    # --- VAE ---------------------------------------------------------------------------------
    def resolve_vae(self, checkpoint: CheckpointInfo, choice: str, overrides: bool = True) -> VaeInfo | None:
        """The external VAE file to use, or None for the checkpoint's own, in A1111's order (sd_vae.resolve_vae):
        with `overrides` (the setting sd_vae_overrides_per_model_preferences) a choice other than Automatic wins;
        else the checkpoint's preferred VAE (its card's user metadata "vae": a name, or "None" for its own), then a
        VAE beside the checkpoint (NAME.vae.safetensors), then the choice."""
        choice = (choice or "Automatic").strip()
        if choice == "Automatic" or not overrides:
            preferred = user_metadata.preferred_vae(checkpoint.filename)
            if preferred == "None":
                return None
            if preferred != "Automatic":  # by its file name only, as A1111's vae_dict is keyed
                found = next((v for v in self.vaes.list() if v.name == preferred), None)
                if found is not None:
                    return found
                if (checkpoint.filename, preferred) not in self._missing_preferred:  # said once, as A1111 goes on
                    self._missing_preferred.add((checkpoint.filename, preferred))
                    log.warning("The preferred VAE %r of %s (its card's user metadata) is not in the VAE folders; "
                                "using %s", preferred, checkpoint.name, "the VAE beside it or the setting's")
            beside = VaeRegistry.beside(checkpoint.filename)
            if beside:
                return VaeInfo(beside.resolve(), beside.name)
        if choice in ("None", "Automatic"):
            return None
        found = self.vaes.find(choice)
        if found is None:
            raise CheckpointError(f"VAE {choice!r} not found. Available: Automatic, None"
                                  + "".join(f", {v.name}" for v in self.vaes.list()))
        return found

    def _apply_vae(self, model: LoadedModel, choice: str, overrides: bool = True) -> None:
        wanted = self.resolve_vae(model.info, choice, overrides)
        current = model.vae_info.filename if model.vae_info else None
        if (wanted.filename if wanted else None) == current:
            return
        if wanted is None:
            model.vae = self._place(model.own_vae, self.plan.vae_dtype, model.low_memory)
            model.own_vae, model.vae_info, model.vae_sha256, model.vae_warning = None, None, None, None
            log.info("Using the checkpoint's own VAE")
            return
        vae_sd = checkpoint_file.read_state_dict(wanted.filename)
        external = loader.build_vae(model.vae_config, vae_sd, model.config, what=f"VAE {wanted.name}")
        external = self._place(external, self.plan.vae_dtype, model.low_memory)
        if model.own_vae is None:
            model.own_vae = model.vae.to("cpu")
        model.vae, model.vae_info = external, wanted
        model.vae_sha256 = self.checkpoints.hashes.sha256(wanted.filename)
        model.vae_warning = vae_family.mismatch(wanted.filename, wanted.name, model.config.family.vae_kind,
                                                model.config.family.label)
        log.info("Using VAE %s", wanted.name)
        if model.vae_warning:
            log.warning("%s", model.vae_warning)
