"""Token merging (A1111's `token_merging_ratio` settings; Bolya and Hoffman's ToMe for Stable Diffusion): before the
self-attention of the U-Net's full-resolution transformer blocks, the most similar tokens are averaged together,
so the attention runs over fewer of them, and its output is copied back to every token that was merged. Faster at
large sizes; the picture changes a little.

The maths is the tomesd library's, which A1111 calls as `apply_patch(model, ratio, use_rand=False,
merge_attn=True, merge_crossattn=False, merge_mlp=False)` with its defaults (max_downsample 1, a 2x2 stride):
- the blocks: those that see as many tokens as the latent has positions (no downsampling), i.e. SD 1.x/2.x's first
  and last levels. SDXL has no transformer at that level, so nothing merges there (nor in A1111).
- per image, one destination token in each 2x2 cell of the latent (its top-left: use_rand off); the
  int(tokens x ratio) other tokens most similar to a destination (cosine similarity of the block's input) are
  averaged into it.
- only the self-attention's input (the block's normalised hidden states) is merged, and its output spread back
  before the residual is added; cross-attention and the feed-forward see every token.

Hooks are put on a U-Net once (`prepare`) and do nothing until a thread sets a ratio (`merging`): a job sets it
around its sampling, so U-Net calls from any other thread, and after the job, merge nothing. A1111 sets the ratio
on the model for the job and back to 0 after it."""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Callable, Iterator

import torch
from tomesd import merge as tome

MAX_DOWNSAMPLE = 1  # tomesd's default, which A1111 keeps: only blocks at the latent's own size merge
STRIDE = 2  # one destination token per STRIDE x STRIDE cell (tomesd's sx, sy)

_local = threading.local()  # this thread's ratio, the latent size of its U-Net call, the merge its next attn1 uses


def ratio() -> float:
    """The calling thread's ratio (0: nothing merges)."""
    return getattr(_local, "ratio", 0.0)


@contextlib.contextmanager
def merging(value: float) -> Iterator[None]:
    """U-Net calls from this thread merge `value` of their tokens within this block (0: none); the ratio before
    comes back after it."""
    before = ratio()
    _local.ratio = value
    try:
        yield
    finally:
        _local.ratio = before
        _local.pending = None


def prepare(unet: torch.nn.Module) -> int:
    """Put the hooks on `unet` (once; later calls do nothing). Returns how many transformer blocks it has."""
    if getattr(unet, "_token_merging_hooks", None) is not None:
        return unet._token_merging_hooks
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock" and hasattr(m, "attn1")]
    unet.register_forward_pre_hook(_remember_size, with_kwargs=True)
    for block in blocks:
        block.register_forward_pre_hook(_plan_merge, with_kwargs=True)
        block.attn1.register_forward_pre_hook(_merge, with_kwargs=True)
        block.attn1.register_forward_hook(_unmerge)
    unet._token_merging_hooks = len(blocks)
    return len(blocks)


def _first(args: tuple, kwargs: dict[str, Any], name: str) -> torch.Tensor:
    return args[0] if args else kwargs[name]


def _remember_size(unet: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """The latent's rows and columns for this call (tomesd reads them from the U-Net's input the same way)."""
    if ratio() > 0:
        sample = _first(args, kwargs, "sample")
        _local.size = (sample.shape[-2], sample.shape[-1])


def _plan_merge(block: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """Before a transformer block: what its self-attention merges, from the block's input (tomesd's compute_merge)."""
    _local.pending = None
    value, size = ratio(), getattr(_local, "size", None)
    if value <= 0 or size is None:
        return
    x = _first(args, kwargs, "hidden_states")
    rows, columns = size
    tokens = x.shape[1]
    if tokens > rows * columns:  # not a picture's tokens (a model this is not made for): left alone
        return
    downsample = int(math.ceil(math.sqrt(rows * columns // tokens)))
    if downsample > MAX_DOWNSAMPLE:
        return
    merge, unmerge = tome.bipartite_soft_matching_random2d(
        x, int(math.ceil(columns / downsample)), int(math.ceil(rows / downsample)), STRIDE, STRIDE,
        int(tokens * value), no_rand=True)
    _local.pending = (block.attn1, merge, unmerge)


def _pending_for(attn: torch.nn.Module) -> tuple[Callable, Callable] | None:
    pending = getattr(_local, "pending", None)
    return pending[1:] if pending is not None and pending[0] is attn else None


def _merge(attn: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
    pending = _pending_for(attn)
    if pending is None:
        return None
    if args:
        return (pending[0](args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": pending[0](kwargs["hidden_states"])}


def _unmerge(attn: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    pending = _pending_for(attn)
    if pending is None:
        return None
    _local.pending = None
    return pending[1](output)
