"""The U-Net's exact speed-ups (models/optimizations.py): the CFG batch's equal halves share the first
self-attention (SharedRows), and on the CPU the linear layers run oneDNN's matrix multiply (OneDnnLinear) and the
GEGLUs two of them with their GELU and product inside (OneDnnGEGLU). What runs, and that the U-Net's output and the
image stay what they were, up to float rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusers.models.activations import GEGLU

from modules.models import optimizations
from tests.support.generation import engine, params  # noqa: F401 (engine: fixture)


class SelfAttentionBatches(list):
    """The batch size of every self-attention call (keys as long as the queries) to PyTorch's SDP attention made
    inside the U-Net (the text encoders and the VAE use it too)."""

    def __init__(self, monkeypatch) -> None:
        super().__init__()
        self.unet = None
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def recording(query, key, *args, **kwargs):
            if self.unet is not None and self.unet.recording and query.shape[-2] == key.shape[-2]:
                self.append(query.shape[0])
            return sdpa(query, key, *args, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)

    def watch(self, unet) -> None:
        self.unet = unet
        unet.recording = False
        unet.register_forward_pre_hook(lambda m, _args: setattr(m, "recording", True))
        unet.register_forward_hook(lambda m, _args, _out: setattr(m, "recording", False))


@pytest.fixture()
def self_attention_batches(monkeypatch):
    return SelfAttentionBatches(monkeypatch)


def unwrapped(unet) -> dict:
    return {name: optimizations.inner_processor(p) for name, p in unet.attn_processors.items()}


def test_first_self_attention_runs_once_for_the_prompt_and_the_negative_prompt(engine, self_attention_batches):
    model = engine.load_checkpoint()
    self_attention_batches.watch(model.unet)
    engine.txt2img(params(steps=3, save_images=False))
    layers = sum(name.endswith("attn1.processor") for name in model.unet.attn_processors)
    calls = list(self_attention_batches)
    assert len(calls) == 3 * layers  # one U-Net call per step (Euler a, CFG batched)
    per_call = [calls[i:i + layers] for i in range(0, len(calls), layers)]
    # the first self-attention sees equal halves and runs on one; the cross-attention after it makes them differ
    assert all(batches == [1] + [2] * (layers - 1) for batches in per_call), per_call


def test_shared_half_gives_the_output_of_the_whole_batch(engine, self_attention_batches):
    engine.txt2img(params(steps=1, save_images=False))
    unet = engine.checkpoints.current.unet
    self_attention_batches.watch(unet)
    wrapped = dict(unet.attn_processors)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([500.0, 500.0])
    with torch.inference_mode():
        self_attention_batches.clear()
        shared = unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample
        assert self_attention_batches[0] == 1
        unet.set_attn_processor(unwrapped(unet))
        try:
            self_attention_batches.clear()
            whole = unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample
            assert set(self_attention_batches) == {2}
        finally:
            unet.set_attn_processor(dict(wrapped))  # (diffusers empties the dict it is given)
        # different latents: nothing is shared, and the wrapped processors compute what the plain ones do
        self_attention_batches.clear()
        two = torch.cat([x, torch.randn(1, 4, 8, 8, generator=g)])
        differing = unet(two, t, encoder_hidden_states=context).sample
        assert set(self_attention_batches) == {2}
        unet.set_attn_processor(unwrapped(unet))
        try:
            differing_plain = unet(two, t, encoder_hidden_states=context).sample
        finally:
            unet.set_attn_processor(dict(wrapped))  # (diffusers empties the dict it is given)
    assert not torch.equal(whole[0], whole[1])  # the two prompts give different predictions
    torch.testing.assert_close(shared, whole, rtol=0, atol=1e-5)
    assert torch.equal(differing, differing_plain)


@pytest.mark.parametrize("attention", ["sub-quadratic", "V1"])
def test_every_attention_setting_shares_the_half_and_keeps_the_image(engine, self_attention_batches, attention):
    reference = engine.txt2img(params(save_images=False))
    engine.options.update({"cross_attention_optimization": attention})
    result = engine.txt2img(params(save_images=False))
    processors = engine.checkpoints.current.unet.attn_processors
    first = next(p for name, p in processors.items() if name.endswith("attn1.processor"))
    seen: list[int] = []
    inner = first.inner
    first.inner = lambda attn, hidden_states, **kw: seen.append(hidden_states.shape[0]) or inner(attn, hidden_states,
                                                                                                  **kw)
    try:
        engine.txt2img(params(steps=1, save_images=False))
    finally:
        first.inner = inner
    assert seen == [1]
    diff = np.abs(np.asarray(result.images[0], dtype=int) - np.asarray(reference.images[0], dtype=int))
    assert diff.max() <= 2


def operators(fn) -> set[str]:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_cpu_unet_linear_layers_run_onednn_with_the_same_output(engine):
    assert optimizations.onednn_linear_works()
    engine.txt2img(params(steps=1, save_images=False))
    assert engine.checkpoints.current.family.cpu_onednn_linear  # SD 1.x (SDXL: tests/engine/test_sdxl.py)
    unet = engine.checkpoints.current.unet
    linear = [m for m in unet.modules() if isinstance(m, torch.nn.Linear)]
    assert linear and all(type(m) is optimizations.OneDnnLinear for m in linear)
    geglu = [m for m in unet.modules() if isinstance(m, GEGLU)]
    assert geglu and all(type(m) is optimizations.OneDnnGEGLU for m in geglu)
    g = torch.Generator().manual_seed(5)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([300.0, 300.0])
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    with torch.inference_mode():
        ops = operators(lambda: unet(x, t, encoder_hidden_states=context))
        # the GEGLUs' GELU (the U-Net's only one) happens inside oneDNN's multiplies
        assert "mkldnn::_linear_pointwise" in ops and not {"aten::addmm", "aten::mm", "aten::gelu"} & ops
        onednn = unet(x, t, encoder_hidden_states=context).sample
        assert optimizations.use_pytorch_layers(unet) == len(linear) + len(geglu)
        try:
            plain = unet(x, t, encoder_hidden_states=context).sample
            ops = operators(lambda: unet(x, t, encoder_hidden_states=context))
            assert {"aten::addmm", "aten::gelu"} <= ops and "mkldnn::_linear_pointwise" not in ops
        finally:
            optimizations.use_onednn_linear(unet)
    torch.testing.assert_close(onednn, plain, rtol=0, atol=1e-5)
    assert not torch.equal(plain, torch.zeros_like(plain))


def test_onednn_linear_leaves_other_types_traces_and_gradients_to_pytorch():
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(24, 16)
    layer.__class__ = optimizations.OneDnnLinear
    x = torch.randn(3, 24, generator=g)
    reference = torch.nn.functional.linear(x, layer.weight, layer.bias)
    with torch.inference_mode():
        assert "mkldnn::_linear_pointwise" in operators(lambda: layer(x))
        torch.testing.assert_close(layer(x), reference, rtol=1e-5, atol=1e-5)
        with torch.autocast("cpu", torch.bfloat16):  # the PyTorch bf16 backend: autocast's own linear, in bf16
            assert layer(x).dtype == torch.bfloat16
        traced = torch.jit.trace(layer, x)  # what the OpenVINO conversion does: the plain operator is recorded
    assert "mkldnn" not in str(traced.graph) and "linear" in str(traced.graph)
    # a forward that records gradients (nothing in the app does): PyTorch's own, so backward works
    out = layer(x.requires_grad_())
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_onednn_geglu_matches_geglu_and_leaves_hooks_types_traces_and_gradients_to_it():
    g = torch.Generator().manual_seed(0)
    layer = GEGLU(24, 32)
    x = torch.randn(2, 5, 24, generator=g)
    with torch.inference_mode():
        reference = layer(x)
    optimizations.use_onednn_linear(layer)
    assert type(layer) is optimizations.OneDnnGEGLU and type(layer.proj) is optimizations.OneDnnLinear
    with torch.inference_mode():
        ops = operators(lambda: layer(x))
        assert "mkldnn::_linear_pointwise" in ops and not {"aten::gelu", "aten::mul"} & ops
        torch.testing.assert_close(layer(x), reference, rtol=1e-5, atol=1e-5)
        # a LoRA patches proj.weight in place: the halves the fused path multiplies by are views of it
        with torch.no_grad():
            layer.proj.weight.mul_(2)
        patched = layer(x)
        optimizations.use_pytorch_layers(layer)
        torch.testing.assert_close(patched, layer(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(patched, reference, atol=1e-3)
        optimizations.use_onednn_linear(layer)
        # a hook on proj must still run: the layer takes GEGLU's own path
        calls = []
        handle = layer.proj.register_forward_pre_hook(lambda m, args: calls.append(1))
        assert "aten::gelu" in operators(lambda: layer(x)) and calls
        handle.remove()
        with torch.autocast("cpu", torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16
        traced = torch.jit.trace(layer, x)
    assert "mkldnn" not in str(traced.graph) and "gelu" in str(traced.graph)
    out = layer(x.requires_grad_())
    out.sum().backward()
    assert x.grad is not None and layer.proj.weight.grad is not None
