"""A job's peak memory, estimated before it samples, and what makes it fit in what the device has free.

A job's memory beyond the model's weights (which are loaded, and so counted in what is no longer free, when
this runs) goes into one phase at a time: each U-Net call (its activations grow with the latent's pixels and
the batch), each image's VAE decode (the largest by far at large sizes, see vae_tiling) and img2img's or the
pixel upscaler's encode. The phases run one after the other and free their memory in between, so the
peak is the largest phase, not their sum.

Before sampling, the job's peak is set against what the device has free. A job that would fail at the VAE
decode after minutes of sampling runs with the tiled VAE when that makes it fit (the infotext says `VAE
tiling: True`); one that fits in no way is refused with the largest batch size and size that would fit.

The per-pixel figures are measured (bench/README.md, "Peak memory of one U-Net call" and "Tiled VAE"), in
float32 with PyTorch's scaled-dot-product attention; other element sizes scale them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from modules.generation import hires, vae_tiling
from modules.generation.context import JobContext
from modules.generation.params import GenerationParams
from modules.generation.vae_tiling import VaeTiling
from modules.models import low_memory
from modules.models.prompt_encoder import CHUNK

MIB = 1024 * 1024
GIB = 1024 * MIB
# What one U-Net call adds to the peak per latent pixel and batch row, float32, SDP attention (bench/unet_memory.py,
# 2026-12-05: SD 1.5 40-59 KB at 512x512, 43-44 KB at 768x768, 43 KB at 1024x1024; SDXL 47 KB at 512x512, 41 KB at
# 768x768). Both families' first level has 320 channels, where most of it is. A family not listed gets the largest.
UNET_BYTES_PER_LATENT_PIXEL = {"sd1": 50_000, "sd2": 50_000, "sdxl": 50_000, "sdxl_refiner": 50_000}
UNET_CHANNELS, VAE_CHANNELS = 320, 128  # the widths the figures were measured at (SD's and SDXL's)
FIXED_BYTES = 256 * MIB  # the sampler's tensors, a preview, what the allocator keeps between phases
MARGIN = 1.15  # room for what the estimate misses: the figures vary by ~15 % between runs of the same call
# Tiling: each convolution pads a copy of its input (circular padding is not done in place). An SD VAE decode's peak
# grew by 26 % at 512x512 and 27 % at 1024x1024 (bench/vae_memory.py --circular, one run each; the encode is taken
# to grow alike, not measured)
CIRCULAR_VAE_FACTOR = 1.27
LOW_MEMORY_TILE = 256  # the tiled VAE's tile in low-memory mode: a 512x512 decode adds 0.55 GB, not 0.98 (bench/README)
SIZE_STEP = 8  # sizes suggested in a refusal are multiples of this (A1111's sliders' step)
TEXT_BYTES = 4  # a context position's element: float32 (the text encoders' on a CPU; on a GPU an upper bound)
CROSS_ATTENTION_WIDTH = 1280  # the widest query of SD's and SDXL's cross-attention (their deepest level)
POSITIONS_PER_CHUNK = CHUNK + 2  # 75 tokens between the start and end tokens
LONG_PROMPT_POSITIONS = POSITIONS_PER_CHUNK * 20  # 1500 tokens: longer prompts' rows count in a U-Net call


@dataclass(frozen=True)
class ModelMemory:
    """What the estimate needs to know about the loaded model."""
    family: str
    unet_bytes: int = 4  # the U-Net's element size (2 in float16)
    vae_bytes: int = 4
    attention: str = "sdp"  # "sdp", "sliced" or "plain" (optimizations.CROSS_ATTENTION)
    heads: int = 8  # attention heads at the U-Net's first attention level (plain attention's matrix)
    batch_cond_uncond: bool = True  # prompt and negative prompt in one U-Net batch
    vae_tiles: bool = True  # the VAE can decode and encode in tiles (vae_tiling.supports)
    # The measured figures are for the published widths (U-Net 320 channels at its first level, VAE 128 at its
    # last); activations at full resolution grow with the channels, so a narrower model (the tests' tiny ones)
    # scales them by its own width over those.
    unet_width: float = 1.0
    vae_width: float = 1.0

    @classmethod
    def of(cls, model) -> ModelMemory:
        """The facts of a loaded model (modules.models.manager.LoadedModel)."""
        heads = model.unet.config.attention_head_dim
        vae_channels = getattr(model.vae.config, "block_out_channels", None) or (VAE_CHANNELS,)
        return cls(family=model.family.name, unet_bytes=model.plan.unet_dtype.itemsize,
                   vae_bytes=low_memory.compute_dtype(model.vae).itemsize, attention=model.attention,
                   heads=int(heads[0] if isinstance(heads, (list, tuple)) else heads),
                   batch_cond_uncond=model.batch_cond_uncond, vae_tiles=vae_tiling.supports(model.vae),
                   unet_width=model.unet.config.block_out_channels[0] / UNET_CHANNELS,
                   vae_width=vae_channels[0] / VAE_CHANNELS)


@dataclass(frozen=True)
class TextMemory:
    """The job's text conditioning (PromptEncoder.context_positions): every distinct prompt text's context is held
    while the job samples, 77 positions a chunk of 75 tokens, each text padded to the longest of its batch. A
    prompt of ordinary length holds a few megabytes; one of 65536 CJK characters (about 2600 chunks) about
    620 MB on SD 1.x, 1.65 GB on SDXL, and prompt editing holds one such context per distinct text."""
    positions: int = 0  # of all contexts held
    longest: int = 0  # positions of the longest context (each U-Net call's rows have this length)
    width: int = 768  # of a position: 768 SD 1.x, 1024 SD 2.x, 2048 SDXL, 1280 its refiner
    parts: int = 1  # the prompt's AND sub-prompts (repeats included): each is a U-Net row of every image

    @property
    def held_bytes(self) -> int:
        return self.positions * self.width * TEXT_BYTES

    @property
    def chunks(self) -> int:
        return self.positions // POSITIONS_PER_CHUNK

    @property
    def longest_tokens(self) -> int:
        return self.longest // POSITIONS_PER_CHUNK * CHUNK

    def per_row_bytes(self, element: int) -> int:
        """What one U-Net row's context adds to a call: the row itself, and the keys and values a cross-attention
        layer projects from it (at most CROSS_ATTENTION_WIDTH wide)."""
        return self.longest * (self.width + 2 * CROSS_ATTENTION_WIDTH) * element


@dataclass(frozen=True)
class Phase:
    what: str  # for a message: "sampling 1024x1024, batch of 2 (CFG in one batch)"
    bytes: int


class NotEnoughMemory(ValueError):
    """The job fits in no way; the message says how much it needs, what is free and what would fit."""


@dataclass(frozen=True)
class Fit:
    tiling: VaeTiling  # the job's own, or Always when tiles make it fit
    peak: Phase
    free: int
    tiled_to_fit: bool = False
    swaps: bool = False  # it fits only with the swap space (on the CPU): slow, but it finishes

    def note(self) -> str | None:
        """What the page and the API's warnings say about how the job was made to fit (None: it fits as asked)."""
        notes = []
        if self.tiled_to_fit:
            notes.append(f"The VAE decodes in tiles so that the job fits in memory (peak with tiles about "
                         f"{gib(self.peak.bytes)}, {self.peak.what}; {gib(self.free)} free)")
        if self.swaps:
            notes.append(f"This job's peak, about {gib(self.peak.bytes)} ({self.peak.what}), is more than the "
                         f"{gib(self.free)} of memory free: it will use swap space and run slowly")
        return "; ".join(notes) or None


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def sampling(width: int, height: int, batch: int, model: ModelMemory, text: TextMemory = TextMemory()) -> Phase:
    """One U-Net call for a batch of images of this size, with `text`'s sub-prompts and its longest context: each
    image is a row for each AND sub-prompt and one for the negative prompt, all in one call (batch_cond_uncond)
    or the negative prompt's in a call of its own."""
    rows = batch * (text.parts + 1 if model.batch_cond_uncond else text.parts)
    pixels = (width // 8) * (height // 8)
    per_pixel = UNET_BYTES_PER_LATENT_PIXEL.get(model.family, max(UNET_BYTES_PER_LATENT_PIXEL.values()))
    need = int(rows * pixels * per_pixel * model.unet_bytes / 4 * model.unet_width)
    if model.attention == "plain":  # softmax(QK^T) of the first attention level held whole, twice; and the
        need += 2 * rows * model.heads * pixels * (pixels + text.longest) * model.unet_bytes  # cross-attention's
    long_prompt = text.longest > LONG_PROMPT_POSITIONS
    if long_prompt:  # beyond that, part of MARGIN
        need += rows * text.per_row_bytes(model.unet_bytes)
    batching = " (prompt and negative prompt in one batch)" if model.batch_cond_uncond else ""
    prompt = f", {text.parts} sub-prompts" if text.parts > 1 else ""
    prompt += f", prompts of {text.longest_tokens} tokens" if long_prompt else ""
    return Phase(f"sampling {width}x{height}, batch size {batch}{batching}{prompt}", need)


def vae_pass(width: int, height: int, batch: int, model: ModelMemory, tiling: VaeTiling, verb: str,
             circular: bool = False) -> Phase:
    """The VAE decodes (or encodes: the same figures, an upper bound) a batch one image at a time; the batch's
    finished images (float, then 8-bit) are held meanwhile. `circular`: a Tiling job (CIRCULAR_VAE_FACTOR)."""
    tiled = model.vae_tiles and tiling.tiles(height, width)
    need = vae_tiling.decode_peak_bytes(height, width, tiled, model.vae_bytes) * model.vae_width
    need = int(need * (CIRCULAR_VAE_FACTOR if circular else 1))
    need += batch * width * height * 16
    return Phase(f"VAE {verb} at {width}x{height}{', tiled' if tiled else ''}", need)


def phases(ctx: JobContext, model: ModelMemory, tiling: VaeTiling, text: TextMemory = TextMemory()) -> list[Phase]:
    """The memory-heavy phases of the job, in the order they run (each batch of the job repeats them); the
    conditioning (`text.held_bytes`) is held beside all of them."""
    p = ctx.params
    batch, (w, h) = p.batch_size, (p.width, p.height)
    full_decode, full_encode = ctx.vae_decode_method == "Full", ctx.vae_encode_method == "Full"
    out = []
    if ctx.is_img2img and full_encode:
        out.append(vae_pass(w, h, batch, model, tiling, "encode", ctx.tiling))
    out.append(sampling(w, h, batch, model, text))
    if ctx.hires:
        tw, th = hires.target_size(p)
        if ctx.hr_upscaler not in hires.LATENT_UPSCALERS:
            if full_decode:
                out.append(vae_pass(w, h, batch, model, tiling, "decode", ctx.tiling))
            if full_encode:
                out.append(vae_pass(tw, th, batch, model, tiling, "encode", ctx.tiling))
        out.append(sampling(tw, th, batch, model, text))
        w, h = tw, th
    if full_decode:
        out.append(vae_pass(w, h, batch, model, tiling, "decode", ctx.tiling))
    return out


def peak(ctx: JobContext, model: ModelMemory, tiling: VaeTiling, text: TextMemory = TextMemory()) -> Phase:
    """The job's largest phase, with the conditioning held beside it and the room every estimate keeps
    (FIXED_BYTES, MARGIN) added."""
    top = max(phases(ctx, model, tiling, text), key=lambda phase: phase.bytes)
    return Phase(top.what, int(top.bytes * MARGIN) + text.held_bytes + FIXED_BYTES)


def fit(ctx: JobContext, model: ModelMemory, free: int, swap: int = 0, limit_note: str = "",
        text: TextMemory = TextMemory()) -> Fit:
    """How the job fits in `free` bytes: as asked, or with the tiled VAE (unless the job's setting is Never), or
    else spilling into `swap` bytes of swap space. NotEnoughMemory when none does, saying what would fit."""
    asked = peak(ctx, model, ctx.vae_tiling, text)
    if asked.bytes <= free:
        return Fit(ctx.vae_tiling, asked, free)
    tiling = _tiling_to_fit(ctx.vae_tiling, model) or ctx.vae_tiling
    least = peak(ctx, model, tiling, text)
    changed = least.bytes < asked.bytes  # the tiles make a difference (the job decodes more than one tile)
    if least.bytes <= free:
        return Fit(tiling, least, free, tiled_to_fit=changed)
    if least.bytes <= free + swap:
        return Fit(tiling, least, free, tiled_to_fit=changed, swaps=True)
    if swap:
        limit_note += f" (with {gib(swap)} of swap space)"
    raise NotEnoughMemory(_refusal(ctx, model, tiling, free + swap, least, limit_note, text))


def _tiling_to_fit(tiling: VaeTiling, model: ModelMemory) -> VaeTiling | None:
    """The tiling that saves the most memory, when the job may use it and it is not already what the job does."""
    if tiling.mode != "Auto" or not model.vae_tiles:
        return None
    return dataclasses.replace(tiling, mode="Always")


def _refusal(ctx: JobContext, model: ModelMemory, tiling: VaeTiling, free: int, need: Phase, limit_note: str,
             text: TextMemory) -> str:
    p = ctx.params
    said = (f"Not enough memory for this job: its peak is about {gib(need.bytes)} ({need.what}) and "
            f"{gib(free)} is free{limit_note}.")
    if ctx.tiling and model.vae_tiles:
        said += " With Tiling the VAE decodes the whole image at once (its tiles could not wrap around)."
    smallest = dataclasses.replace(_with(ctx, p, batch_size=1, width=SIZE_STEP, height=SIZE_STEP), hr_choice=None)
    if peak(smallest, model, tiling, text).bytes > free and peak(smallest, model, tiling).bytes <= free:
        return (f"{said} The prompts are too long for it: their conditioning alone is about "
                f"{gib(text.held_bytes)} ({text.chunks} chunks of {CHUNK} tokens; the longest prompt has "
                f"{text.longest_tokens} tokens). Shorten the prompt, or give it fewer prompt-editing steps.")
    options = []
    batch = _largest(lambda b: _with(ctx, p, batch_size=b), model, tiling, free, range(p.batch_size - 1, 0, -1),
                     text)
    if batch is not None:
        options.append(f"batch size {batch} at {p.width}x{p.height}")
    size = _largest_size(ctx, model, tiling, free, text)
    if size is not None:
        options.append(f"{size[0]}x{size[1]} at batch size {p.batch_size}")
    if options:
        return f"{said} What fits: {' or '.join(options)}."
    return f"{said} Not even the smallest size fits: close other programs, or use a smaller model."


def _with(ctx: JobContext, params: GenerationParams, **changes) -> JobContext:
    return dataclasses.replace(ctx, params=params.model_copy(update=changes))


def _largest(make, model: ModelMemory, tiling: VaeTiling, free: int, candidates, text: TextMemory
             ) -> int | None:
    for value in candidates:
        if peak(make(value), model, tiling, text).bytes <= free:
            return value
    return None


def _largest_size(ctx: JobContext, model: ModelMemory, tiling: VaeTiling, free: int, text: TextMemory
                  ) -> tuple[int, int] | None:
    """The largest width x height of the job's shape (multiples of SIZE_STEP) that fits, if one does; a Hires. fix
    size given in pixels (hr_resize_x/y) shrinks with it."""
    p = ctx.params
    longer = max(p.width, p.height)

    def scaled(value: int, side: int) -> int:
        return max(SIZE_STEP, round(value * side / longer / SIZE_STEP) * SIZE_STEP) if value else 0

    def smaller(side: int) -> JobContext:
        return _with(ctx, p, width=scaled(p.width, side), height=scaled(p.height, side),
                     hr_resize_x=scaled(p.hr_resize_x, side), hr_resize_y=scaled(p.hr_resize_y, side))

    side = _largest(smaller, model, tiling, free, range(longer - SIZE_STEP, SIZE_STEP - 1, -SIZE_STEP), text)
    return (scaled(p.width, side), scaled(p.height, side)) if side is not None else None
