"""Speed and memory options of a loaded model that can change between jobs without reloading it.

- Cross-attention: `Automatic` / `sdp` use PyTorch's scaled-dot-product attention (diffusers' default,
  fastest where it is available); `sub-quadratic` computes attention in slices (diffusers' sliced
  attention: lower peak memory, a little slower); `V1` / `None` use the plain softmax(QK^T)V
  implementation of the original code. A1111's other choices (xformers, Doggettx, InvokeAI, sdp-no-mem)
  are not offered: they need packages or kernels this program does not install.
- `batch_cond_uncond`: run the prompt's and the negative prompt's U-Net passes as one batch (faster)
  or one after the other (less memory), as A1111's option of that name.

Whichever implementation is chosen, the U-Net's first self-attention layer's processor is wrapped in `SharedRows`
where the family says the halves can meet there (`shares_first_self_attention`: SD 1.x/2.x): with the prompt and
the negative prompt in one batch, both halves of the batch hold the same latent until the first cross-attention
layer has seen the two prompts, so the first self-attention (SD 1.x/2.x: at the full latent size, the most costly
one) is computed for one half and copied to the other. Only the first: after it the halves differ (unless the two
prompts are the same), and on a GPU each comparison waits for the device. SDXL adds its pooled prompt to the time
embedding, so its halves differ from the first layer on and it is not wrapped (the comparison would be all cost).

On the CPU the U-Net's linear layers run oneDNN's float32 matrix multiply (`OneDnnLinear`) instead of the MKL one
PyTorch's own `linear` uses: on this project's AMD CPU it was faster at every SD 1.5 shape measured
(bench/linear_kernels.py), and it adds the bias inside the multiply instead of copying it into the output first. The
results differ only in rounding (the summation order), as they would with another thread count. The transformer
blocks' GEGLU feed-forward input runs as two such multiplies with its GELU and its product inside them
(`OneDnnGEGLU`), instead of one multiply and two passes over its output. Each family says whether it uses them
(`cpu_onednn_linear`): SDXL does not, since with them its peak at 1024x1024 rose by 0.8-1.4 GB, to or past its 16 GB
budget (the heap the app's earlier phases leave, not oneDNN's own buffers: bench/README.md).
"""

from __future__ import annotations

import functools
import logging
import platform

import torch
from diffusers.models.activations import GEGLU
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


def sharing_first_self_attention(processors: dict) -> dict:
    """`processors` (layer name -> processor, as `unet.attn_processors` lists them: in the order they run) with the
    first self-attention's wrapped in SharedRows."""
    first = next((name for name in processors if name.endswith("attn1.processor")), None)
    return {name: SharedRows(p) if name == first else p for name, p in processors.items()}


def inner_processor(processor):
    """The implementation a (possibly wrapped) attention processor runs."""
    return processor.inner if isinstance(processor, SharedRows) else processor


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a float32 CPU forward of `x` through `weight` may run oneDNN's operator: not under autocast (the
    `PyTorch bf16` backend: its own linear in bf16), nor in a trace or compile (the OpenVINO conversion must record
    the plain operator), nor when it records gradients."""
    return (x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu") and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


class OneDnnLinear(torch.nn.Linear):
    """A linear layer whose float32 CPU forward runs oneDNN's matrix multiply, the bias added inside it. Anything
    else (`_onednn_applies`) runs as `torch.nn.Linear`. It has the same parameters under the same names, so LoRA,
    hypernetwork hooks and low-memory storage work on it unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _onednn_applies(x, self.weight):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)


class OneDnnGEGLU(GEGLU):
    """diffusers' GEGLU (the transformer blocks' feed-forward input: `a * gelu(gate)`, where `a` and `gate` are the
    two halves of one linear layer's output) as two oneDNN multiplies with the elementwise work inside them: the
    gate's half with GELU (erf, as `F.gelu`) applied to its output, then the other half multiplied into it. The
    halves' weights are views of the layer's own, so a LoRA patched into `proj.weight` is used. The plain GEGLU
    writes the whole product, reads it back for GELU and again for the multiply; at 4096 tokens this took 25 % less
    time (bench/README.md). Anything `_onednn_applies` leaves out, or a `proj` with hooks of its own (which would
    not run), runs as `GEGLU`. Low-memory mode casts a GEGLU's weights with hooks on the GEGLU itself
    (low_memory.CAST_UNITS), so it takes this path too, with the same numbers as the default mode."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        proj = self.proj
        if (_onednn_applies(hidden_states, proj.weight) and proj.bias is not None and not args and not kwargs
                and not proj._forward_pre_hooks and not proj._forward_hooks):
            half = proj.weight.shape[0] // 2
            gate = torch.ops.mkldnn._linear_pointwise(hidden_states, proj.weight[half:], proj.bias[half:],
                                                      "gelu", [], "none")
            return torch.ops.mkldnn._linear_pointwise.binary(hidden_states, gate, proj.weight[:half],
                                                             proj.bias[:half], "mul")
        return super().forward(hidden_states, *args, **kwargs)


@functools.cache
def onednn_linear_works() -> bool:
    """Whether this PyTorch has oneDNN's linear operator, with the GELU and product the GEGLU puts inside it, and
    they compute what PyTorch's own operators do (checked once, on a small input)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False  # measured faster than MKL on x86-64 only (bench/linear_kernels.py); ARM builds use other BLAS
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(2, 5, 24, generator=g), torch.randn(16, 24, generator=g), torch.randn(16, generator=g)
        geglu = GEGLU(24, 8)
        with torch.inference_mode():
            out = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
            expected = geglu(x)
            geglu.__class__ = OneDnnGEGLU
            fused = geglu(x)
        works = bool(torch.backends.mkldnn.is_available()) and torch.allclose(
            out, torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-5) and torch.allclose(
            fused, expected, rtol=1e-5, atol=1e-5)
    except (AttributeError, RuntimeError) as e:
        log.info("oneDNN linear layers are not available (%s); PyTorch's own run", e)
        return False
    if not works:
        log.warning("oneDNN's linear operator gave different numbers from PyTorch's; PyTorch's own run")
    return works


def use_onednn_linear(unet: torch.nn.Module) -> int:
    """Make `unet`'s linear layers OneDnnLinear and its GEGLUs OneDnnGEGLU (once; where oneDNN's operator works).
    The number changed."""
    if not onednn_linear_works():
        return 0
    return _swap(unet, ONEDNN_LAYERS)


ONEDNN_LAYERS = {torch.nn.Linear: OneDnnLinear, GEGLU: OneDnnGEGLU}


def use_pytorch_layers(unet: torch.nn.Module) -> int:
    """Undo `use_onednn_linear` (for comparisons: the benchmarks and tests). The number changed."""
    return _swap(unet, {onednn: plain for plain, onednn in ONEDNN_LAYERS.items()})


def _swap(unet: torch.nn.Module, classes: dict) -> int:
    layers = [m for m in unet.modules() if type(m) in classes]
    for layer in layers:
        layer.__class__ = classes[type(layer)]
    return len(layers)


def apply(model: LoadedModel, cross_attention: str, batch_cond_uncond: bool) -> None:
    """Set `model`'s attention implementation (only when it changes), its cond/uncond batching, and on the CPU its
    U-Net's linear layers and GEGLUs (OneDnnLinear, OneDnnGEGLU)."""
    if model.plan.device.type == "cpu" and model.family.cpu_onednn_linear and use_onednn_linear(model.unet):
        log.info("U-Net linear layers: oneDNN")
    kind = CROSS_ATTENTION.get(cross_attention, "sdp")
    if model.attention != kind:
        unet = model.unet
        if kind == "sliced":
            unet.set_attention_slice("auto")  # a processor per layer, sized by its head count
            chosen = {name: inner_processor(p) for name, p in unet.attn_processors.items()}
        else:
            chosen = {name: AttnProcessor2_0() if kind == "sdp" else AttnProcessor() for name in unet.attn_processors}
        unet.set_attn_processor(sharing_first_self_attention(chosen) if model.family.shares_first_self_attention
                                else chosen)
        model.attention = kind
        log.info("Cross-attention: %s (%s)", cross_attention, kind)
    model.batch_cond_uncond = bool(batch_cond_uncond)
