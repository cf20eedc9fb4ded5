"""Speed and memory options of a loaded model that can change between jobs without reloading it.

- Cross-attention: `Automatic` / `sdp` use PyTorch's scaled-dot-product attention (diffusers' default,
  fastest where it is available); `sub-quadratic` computes attention in slices (diffusers' sliced
  attention: lower peak memory, a little slower); `V1` / `None` use the plain softmax(QK^T)V
  implementation of the original code. A1111's other choices (xformers, Doggettx, InvokeAI, sdp-no-mem)
  are not offered: they need packages or kernels this program does not install.
- `batch_cond_uncond`: run the prompt's and the negative prompt's U-Net passes as one batch (faster)
  or one after the other (less memory), as A1111's option of that name.

Whichever implementation is chosen, each self-attention layer's processor is wrapped in `SharedRows`: with the
prompt and the negative prompt in one batch, both halves of the batch hold the same latent until the first
cross-attention layer has seen the two prompts, so the first self-attention (SD 1.x/2.x: at the full latent size,
the most costly one) is computed for one half and copied to the other.
"""

from __future__ import annotations

import logging

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from modules.models.manager import LoadedModel

log = logging.getLogger(__name__)

# Setting value -> the implementation it selects.
CROSS_ATTENTION = {"Automatic": "sdp", "sdp": "sdp", "sub-quadratic": "sliced", "V1": "plain", "None": "plain"}


class SharedRows:
    """An attention processor around another (`inner`). A self-attention call whose batch is two equal halves runs
    `inner` on the first half and repeats its output: the CFG batch is [prompt rows, negative prompt rows] of the
    same latents, and their hidden states stay equal until a cross-attention layer has seen the two prompts. The
    halves are compared exactly (`torch.equal`), so any other batch runs whole; the shared half's values are
    what that half computes in a batch of its own (rounding of the smaller matrix products aside). A traced or
    compiled U-Net (the OpenVINO conversion) always runs whole: a trace would keep whichever branch its example
    took."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        rows = hidden_states.shape[0]
        if (encoder_hidden_states is None and attention_mask is None and rows % 2 == 0
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
                and torch.equal(hidden_states[: rows // 2], hidden_states[rows // 2:])):
            half = self.inner(attn, hidden_states[: rows // 2], **kwargs)
            return half.repeat(2, *(1,) * (half.dim() - 1))
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                          attention_mask=attention_mask, **kwargs)


def inner_processor(processor):
    """The implementation a (possibly wrapped) attention processor runs."""
    return processor.inner if isinstance(processor, SharedRows) else processor


def apply(model: LoadedModel, cross_attention: str, batch_cond_uncond: bool) -> None:
    """Set `model`'s attention implementation (only when it changes) and its cond/uncond batching."""
    kind = CROSS_ATTENTION.get(cross_attention, "sdp")
    if model.attention != kind:
        unet = model.unet
        if kind == "sliced":
            unet.set_attention_slice("auto")  # a processor per layer, sized by its head count
            chosen = {name: inner_processor(p) for name, p in unet.attn_processors.items()}
        else:
            chosen = {name: AttnProcessor2_0() if kind == "sdp" else AttnProcessor() for name in unet.attn_processors}
        unet.set_attn_processor({name: SharedRows(p) if name.endswith("attn1.processor") else p
                                 for name, p in chosen.items()})
        model.attention = kind
        log.info("Cross-attention: %s (%s)", cross_attention, kind)
    model.batch_cond_uncond = bool(batch_cond_uncond)
