"""Speed and memory options of a loaded model that can change between jobs without reloading it.

- Cross-attention: `Automatic` / `sdp` use PyTorch's scaled-dot-product attention (diffusers' default,
  fastest where it is available); `sub-quadratic` computes attention in slices (diffusers' sliced
  attention: lower peak memory, a little slower); `V1` / `None` use the plain softmax(QK^T)V
  implementation of the original code. A1111's other choices (xformers, Doggettx, InvokeAI, sdp-no-mem)
  are not offered: they need packages or kernels this program does not install.
- `batch_cond_uncond`: run the prompt's and the negative prompt's U-Net passes as one batch (faster)
  or one after the other (less memory), as A1111's option of that name.
"""

from __future__ import annotations

import logging

from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from modules.models.manager import LoadedModel

log = logging.getLogger(__name__)

# Setting value -> the implementation it selects.
CROSS_ATTENTION = {"Automatic": "sdp", "sdp": "sdp", "sub-quadratic": "sliced", "V1": "plain", "None": "plain"}


def apply(model: LoadedModel, cross_attention: str, batch_cond_uncond: bool) -> None:
    """Set `model`'s attention implementation (only when it changes) and its cond/uncond batching."""
    kind = CROSS_ATTENTION.get(cross_attention, "sdp")
    if model.attention != kind:
        if kind == "sliced":
            model.unet.set_attention_slice("auto")
        else:
            model.unet.set_attn_processor(AttnProcessor2_0() if kind == "sdp" else AttnProcessor())
        model.attention = kind
        log.info("Cross-attention: %s (%s)", cross_attention, kind)
    model.batch_cond_uncond = bool(batch_cond_uncond)
