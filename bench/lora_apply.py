"""Time merging a LoRA into an SD 1.5-size U-Net and text encoder, and taking it out again.

    python bench/lora_apply.py [--rank 32] [--locon] [--device cpu|cuda] [--dtype float32|float16]

Builds the SD 1.5 U-Net (859.52M parameters) and CLIP ViT-L text encoder with random weights (nothing
is downloaded), writes a kohya-ss layout LoRA for every layer a usual SD 1.5 LoRA trains (attention,
feed-forward and projection layers of the U-Net; attention and MLP layers of the text encoder; with
--locon also the resnet convolutions), then times `WeightPatcher.apply` (read the file, compute each
delta, add it) and `restore` (copy the originals back), checks that every weight is bit-identical to
before, and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from bench.make_sd15_checkpoint import TEXT_CONFIG, UNET_CONFIG  # noqa: E402
from modules.models import lora  # noqa: E402


def trained_layers(unet, text_model, locon: bool) -> dict[str, torch.nn.Module]:
    """kohya key -> layer, for the layers an SD 1.5 LoRA (LoCon) usually changes."""
    out = {}
    for name, m in unet.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and (
                "attentions" in name or (locon and "resnets" in name and ".conv" in name)):
            out["lora_unet_" + name.replace(".", "_")] = m
    for name, m in text_model.named_modules():
        if isinstance(m, torch.nn.Linear) and ("self_attn" in name or "mlp" in name):
            out["lora_te_text_model_" + name.removeprefix("text_model.").replace(".", "_")] = m
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--locon", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    args = ap.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    unet = UNet2DConditionModel(**UNET_CONFIG).to(args.device, dtype)
    text_model = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).to(args.device, dtype)
    layers = trained_layers(unet, text_model, args.locon)
    g = torch.Generator().manual_seed(1)
    sd = {}
    for key, m in layers.items():
        out_ch, in_ch = m.weight.shape[:2]
        kernel = tuple(m.weight.shape[2:])
        sd[f"{key}.lora_down.weight"] = torch.randn(args.rank, in_ch, *kernel, generator=g) * 0.01
        sd[f"{key}.lora_up.weight"] = torch.randn(out_ch, args.rank, *((1, 1) if kernel else ()), generator=g) * 0.01
        sd[f"{key}.alpha"] = torch.tensor(float(args.rank) / 2)
    before = {k: v.clone() for k, v in list(unet.state_dict().items()) + list(text_model.state_dict().items())}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.safetensors"
        save_file({k: v.half().contiguous() for k, v in sd.items()}, str(path))
        info = lora.LoraInfo(path, "bench", {}, path.stat().st_mtime)
        patcher = lora.WeightPatcher(unet, text_model)
        _ = patcher.index  # built once per loaded model; not part of an apply
        timings = {"apply": [], "restore": []}
        for _ in range(3):
            start = time.perf_counter()
            notes = patcher.apply([lora.Activation(info, 1.0, 1.0, "bench")])
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            timings["apply"].append(time.perf_counter() - start)
            start = time.perf_counter()
            patcher.restore()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            timings["restore"].append(time.perf_counter() - start)
        exact = all(torch.equal(before[k], v) for k, v in
                    list(unet.state_dict().items()) + list(text_model.state_dict().items()))
    print(json.dumps({
        "layers": len(layers), "rank": args.rank, "locon": args.locon, "device": args.device, "dtype": args.dtype,
        "file_mb": round(path.stat().st_size / 2**20, 1) if path.exists() else None,
        "apply_s": [round(t, 3) for t in timings["apply"]], "restore_s": [round(t, 3) for t in timings["restore"]],
        "bit_identical_after_restore": exact, "notes": notes, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
