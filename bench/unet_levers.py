"""Seconds per U-Net call (the real SD 1.5 architecture, random weights) for each CPU speed lever, side by side in
one process, with how far each one's output is from the plain PyTorch call's.

    python bench/unet_levers.py [--size 512] [--batch 2] [--calls 3] [--levers plain,channels_last,bf16,...]

Levers: `plain` (PyTorch fp32, SDP attention: diffusers' U-Net as it comes), `shared_rows` (the CFG batch's equal halves
share the first self-attention: `optimizations.SharedRows`), `onednn_linear` (the linear layers run oneDNN's matrix
multiply: `optimizations.OneDnnLinear`), `onednn` (that, and the GEGLUs as two oneDNN multiplies with GELU and the
product inside: `optimizations.OneDnnGEGLU`), `app` (`shared_rows` and `onednn`: what the engine runs on a CPU),
`channels_last` (the U-Net and its input in NHWC memory order), `bf16` (torch.autocast to bfloat16: not exact),
`tome` (`app` with token merging at --tome-ratio: `token_merging.merging`, A1111's token_merging_ratio; not exact),
`compile` (torch.compile, inductor; its compile time is reported), `compile_frozen` (the same with inductor's
`freezing`: the weights become constants, so convolutions and linear layers get prepacked weights), `openvino` (OpenVINO
f32: convert time and compile time reported), `openvino_bf16` (OpenVINO with bf16 inference precision: not exact).
`plain` runs first and again last, so drift from other load shows. Prints one JSON object: per lever the median seconds
per call, the ratio to `plain`, the one-time cost, and the output's difference to `plain`'s (max absolute, and a PSNR
over the output's range). The batch is a CFG batch: its two halves hold the same latents (with different contexts), as
the engine's prompt and negative prompt rows do."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

# The app's offline switches before any library reads them (OpenVINO sends usage statistics otherwise).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modules import offline  # noqa: E402

offline.apply()

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.models.activations import GEGLU  # noqa: E402
from diffusers.models.attention_processor import AttnProcessor2_0  # noqa: E402

LEVERS = ("plain", "shared_rows", "onednn_linear", "onednn", "app", "tome", "channels_last", "bf16", "compile",
          "compile_frozen", "openvino", "openvino_bf16")
TOME_RATIO = [0.5]  # --tome-ratio
_merging = contextlib.ExitStack()  # the `tome` lever's ratio, while it is the lever set


class Traceable(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, c):
        return self.unet(x, t, encoder_hidden_states=c, return_dict=False)[0]


def timed(fn, calls: int) -> tuple[float, torch.Tensor]:
    out = fn()  # the first call (allocations, kernel choice) is not counted
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), torch.as_tensor(out).float()


def difference(out: torch.Tensor, ref: torch.Tensor) -> dict:
    mse = float(((out - ref) ** 2).mean())
    span = float(ref.max() - ref.min())
    return {"max_abs_diff": float((out - ref).abs().max()),
            "psnr_db": round(10 * torch.log10(torch.tensor(span ** 2 / mse)).item(), 1) if mse else None}


# set up in milliseconds: --interleave takes turns
SWITCHABLE = ("plain", "shared_rows", "onednn_linear", "onednn", "app", "tome")


def configure(name: str, unet) -> None:
    """Put the U-Net in lever `name`'s state (one of SWITCHABLE), from any other of them."""
    from modules.models import optimizations, token_merging
    _merging.close()
    if name == "tome":
        token_merging.prepare(unet)
        _merging.enter_context(token_merging.merging(TOME_RATIO[0]))
    plain = {key: AttnProcessor2_0() for key in unet.attn_processors}
    shared = name in ("shared_rows", "app", "tome")
    unet.set_attn_processor(optimizations.sharing_first_self_attention(plain) if shared else plain)
    optimizations.use_pytorch_layers(unet)
    if name in ("onednn_linear", "onednn", "app", "tome"):
        optimizations.use_onednn_linear(unet)
    if name == "onednn_linear":  # the linear layers alone: the GEGLUs as diffusers has them
        for layer in unet.modules():
            if isinstance(layer, optimizations.OneDnnGEGLU):
                layer.__class__ = GEGLU


def interleaved(names: list[str], unet, model, inputs, calls: int) -> dict:
    """The SWITCHABLE levers take turns, one call each per round, so that the machine's drift falls on all alike."""
    x, t, c = inputs
    times: dict[str, list[float]] = {name: [] for name in names}
    outputs = {}
    for round_ in range(calls + 1):  # round 0 (allocations, kernel choice) is not counted
        for name in names:
            configure(name, unet)
            started = time.perf_counter()
            outputs[name] = model(x, t, c)
            if round_:
                times[name].append(time.perf_counter() - started)
    configure("plain", unet)
    return {name: {"s_per_call": round(statistics.median(times[name]), 3),
                   "s_calls": [round(v, 3) for v in times[name]], "output": outputs[name].float()} for name in names}


def lever(name: str, unet, model, inputs, calls: int) -> dict:
    x, t, c = inputs
    setup = time.perf_counter()
    if name in SWITCHABLE:
        configure(name, unet)
        fn = lambda: model(x, t, c)  # noqa: E731
    elif name == "channels_last":
        unet.to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)
        fn = lambda: model(xc, t, c)  # noqa: E731
    elif name == "bf16":
        def fn():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x, t, c)
    elif name in ("compile", "compile_frozen"):
        import torch._inductor.config as inductor_config
        inductor_config.freezing = name == "compile_frozen"  # weights as constants: prepacked for oneDNN/MKL
        torch._dynamo.reset()
        compiled = torch.compile(model)
        compiled(x, t, c)
        fn = lambda: compiled(x, t, c)  # noqa: E731
    else:
        import openvino as ov
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = ov.convert_model(model, example_input=(x, t, c))
        precision = "bf16" if name == "openvino_bf16" else "f32"
        request = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": precision}
                                          ).create_infer_request()
        arrays = (x.numpy(), t.numpy(), c.numpy())
        fn = lambda: torch.from_numpy(request.infer(arrays)[0].copy())  # noqa: E731
    setup_s = time.perf_counter() - setup
    seconds, out = timed(fn, calls)
    if name == "channels_last":
        unet.to(memory_format=torch.contiguous_format)
    if name in SWITCHABLE:
        configure("plain", unet)  # every lever leaves the U-Net plain for the next
    return {"s_per_call": round(seconds, 3), "setup_s": round(setup_s, 1), "output": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2, help="U-Net batch rows (2: one image with CFG batched)")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--levers", default="plain,channels_last,bf16,openvino,openvino_bf16")
    ap.add_argument("--tome-ratio", type=float, default=0.5, help="the `tome` lever's token merging ratio")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="glibc keeps freed memory for reuse, as the app does on a CPU (devices.keep_freed_memory)")
    ap.add_argument("--interleave", action="store_true",
                    help=f"levers {', '.join(SWITCHABLE)} only: they take turns, one call each per round, and the "
                         "ratios are to plain's median in the same rounds")
    args = ap.parse_args()
    if args.keep_freed_memory:
        from modules import devices
        devices.keep_freed_memory()
    TOME_RATIO[0] = args.tome_ratio
    names = [n for n in args.levers.split(",") if n]
    unknown = set(names) - set(LEVERS)
    if unknown:
        ap.error(f"unknown levers {sorted(unknown)}; known: {', '.join(LEVERS)}")
    if args.interleave and set(names) - set(SWITCHABLE):
        ap.error(f"--interleave takes only {', '.join(SWITCHABLE)}")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval().requires_grad_(False)
    unet.set_attn_processor(AttnProcessor2_0())
    model = Traceable(unet)
    n = args.size // 8
    latents = torch.randn((args.batch + 1) // 2, 4, n, n)
    inputs = (torch.cat([latents, latents])[:args.batch], torch.full((args.batch,), 500.0),
              torch.randn(args.batch, 77, 768))
    result = {"size": args.size, "batch": args.batch, "calls": args.calls, "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "keep_freed_memory": args.keep_freed_memory, "loadavg_start": os.getloadavg(),
              "torch": torch.__version__, "interleave": args.interleave, "tome_ratio": args.tome_ratio, "levers": {}}
    with torch.inference_mode():
        if args.interleave:
            names = ["plain"] + [n for n in names if n != "plain"]
            figures = interleaved(names, unet, model, inputs, args.calls)
            ref = figures["plain"]["output"]
            for name in names:
                out = figures[name].pop("output")
                result["levers"][name] = {**figures[name], **difference(out, ref),
                                          "ratio_to_plain": round(figures[name]["s_per_call"]
                                                                  / figures["plain"]["s_per_call"], 3)}
            result["loadavg_end"] = os.getloadavg()
            print(json.dumps(result, indent=1))
            return
        order = ["plain"] + [n for n in names if n != "plain"] + ["plain"]
        ref = None
        for i, name in enumerate(order):
            figures = lever(name, unet, model, inputs, args.calls)
            out = figures.pop("output")
            if ref is None:
                ref = out
            key = "plain_again" if i == len(order) - 1 else name
            result["levers"][key] = {**figures, **difference(out, ref)}
            print(f"{key}: {figures}", file=sys.stderr)
    base = statistics.mean([result["levers"]["plain"]["s_per_call"], result["levers"]["plain_again"]["s_per_call"]])
    for figures in result["levers"].values():
        figures["ratio_to_plain"] = round(figures["s_per_call"] / base, 3)
    result["loadavg_end"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
