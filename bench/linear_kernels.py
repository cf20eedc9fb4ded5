"""GFLOP/s of float32 linear layers at the SD 1.5 U-Net's shapes (512x512, CFG batch) on the CPU, for each kernel
PyTorch offers: `torch.nn.functional.linear` (MKL's sgemm in PyTorch's x86 builds), oneDNN's linear operator with the
weight as it is (what `optimizations.OneDnnLinear` runs), and MKL with a prepacked weight (what torch.compile's
freezing uses). Each kernel's output is compared with `linear`'s. Then the transformer blocks' GEGLU (`a * gelu(gate)`,
the two halves of one projection) at its three widths: diffusers' `GEGLU` on oneDNN linear layers (what the engine ran
before `optimizations.OneDnnGEGLU`), and `OneDnnGEGLU` (two oneDNN multiplies, GELU and the product inside them).

    python bench/linear_kernels.py [--calls 5]

Prints one JSON object: per shape (rows x in x out), per kernel the median seconds, GFLOP/s and max abs difference;
under `geglu`, per shape (rows x in x out of each half) the median seconds of each, their ratio and the difference."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from modules import offline  # noqa: E402

offline.apply()

import torch  # noqa: E402
from diffusers.models.activations import GEGLU  # noqa: E402

from modules.models import optimizations  # noqa: E402

# (rows, in, out): batch 2 x tokens, at the U-Net's three attention levels: the attention projections, the
# feed-forward's GEGLU projection (out = 8 x width) and its output projection
SHAPES = [(8192, 320, 320), (8192, 320, 2560), (8192, 1280, 320),
          (2048, 640, 640), (2048, 640, 5120), (2048, 2560, 640),
          (512, 1280, 1280), (512, 1280, 10240), (512, 5120, 1280)]
GEGLU_SHAPES = [(8192, 320, 1280), (2048, 640, 2560), (512, 1280, 5120)]  # (rows, in, out of each half)


def median_seconds(fn, calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    result = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
              "loadavg_start": os.getloadavg(), "shapes": {}}
    with torch.inference_mode():
        for rows, k, n in SHAPES:
            x = torch.randn(rows, k, generator=g)
            w, b = torch.randn(n, k, generator=g) / k ** 0.5, torch.randn(n, generator=g)
            reference = torch.nn.functional.linear(x, w, b)
            packed = torch.ops.mkl._mkl_reorder_linear_weight(w, rows)
            kernels = {
                "linear": lambda: torch.nn.functional.linear(x, w, b),
                "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""),
                "mkl_packed": lambda: torch.ops.mkl._mkl_linear(x, packed, w, b, rows),
            }
            figures = {}
            for name, fn in kernels.items():
                seconds = median_seconds(fn, args.calls)
                figures[name] = {"s": round(seconds, 5), "gflops": round(2 * rows * k * n / seconds / 1e9, 1),
                                 "max_abs_diff": float((fn() - reference).abs().max())}
            result["shapes"][f"{rows}x{k}x{n}"] = figures
        result["geglu"] = {}
        for rows, k, n in GEGLU_SHAPES:
            layer = GEGLU(k, n)
            x = torch.randn(2, rows // 2, k, generator=g)
            optimizations.use_onednn_linear(layer)
            fused_s = median_seconds(lambda: layer(x), args.calls)
            fused = layer(x)
            layer.__class__ = GEGLU  # its proj stays OneDnnLinear
            plain_s = median_seconds(lambda: layer(x), args.calls)
            result["geglu"][f"{rows}x{k}x{n}"] = {
                "geglu_s": round(plain_s, 5), "onednn_geglu_s": round(fused_s, 5),
                "ratio": round(fused_s / plain_s, 3), "max_abs_diff": float((fused - layer(x)).abs().max())}
    result["loadavg_end"] = os.getloadavg()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
