"""Model upscalers on an NVIDIA GPU, as the engine runs them there: Real-ESRGAN and DAT files in fp16, the others in
fp32 (A1111's choice), each against the same model in fp32 on the CPU. The tiny random-weight models of
tests/support/upscalers; see tests/cuda/test_cuda_generation.py for how these tests run (never in CI; they fail
without CUDA, and CUDA_TESTS_ON_CPU=1 runs their code on the CPU with fp16 weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules import devices
from modules.models.upscalers import UpscalerModels
from tests.cuda.test_cuda_generation import device, gpu_plan  # noqa: F401  (fixtures)
from tests.support.upscalers import compact_state_dict, esrgan_state_dict, write

CPU = devices.DevicePlan(torch.device("cpu"), torch.float32, torch.float32)


@pytest.mark.parametrize("folder,file,name,half", [
    ("RealESRGAN", "realesr-general-x4v3.pth", "R-ESRGAN General 4xV3", True),
    ("ESRGAN", "tiny-4x.pth", "tiny-4x", False),
])
def test_model_upscalers_on_the_gpu_match_the_cpu(tmp_path, device, gpu_plan, folder, file, name, half,  # noqa: F811
                                                  record_property):
    state = compact_state_dict(seed=5, scale=4) if folder == "RealESRGAN" else esrgan_state_dict(seed=5)
    write(tmp_path / folder / file, state, wrap="params" if folder == "RealESRGAN" else None)
    folders = ((folder, tmp_path / folder),)
    gpu, cpu = UpscalerModels(folders, gpu_plan), UpscalerModels(folders, CPU)
    item = gpu.find(name)
    param = next(gpu.load(item).model.parameters())
    assert param.device.type == device.type
    assert param.dtype == (torch.float16 if half and gpu_plan.unet_dtype == torch.float16 else torch.float32)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8), "RGB")
    on_gpu = np.asarray(gpu.model_pass(item, 32, 8)(image), dtype=np.int16)
    on_cpu = np.asarray(cpu.model_pass(cpu.find(name), 32, 8)(image), dtype=np.int16)
    diff = np.abs(on_gpu - on_cpu)
    record_property("upscaler_gpu_vs_cpu", {"name": name, "dtype": str(param.dtype), "max": int(diff.max()),
                                            "mean": round(float(diff.mean()), 3)})
    assert on_gpu.shape == on_cpu.shape == (160, 224, 3)
    assert diff.mean() < 1.0 and diff.max() <= 16  # rounding, not another image (unrelated ones differ by ~70)
