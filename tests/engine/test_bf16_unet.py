"""The 'PyTorch bf16' U-Net backend (setting unet_backend): the U-Net computes in bfloat16 under torch.autocast on
CPUs that do bfloat16 in hardware; elsewhere the job runs in float32 as usual, with a note. Switching back gives
the float32 image again, bit for bit."""

from __future__ import annotations

import pytest
import torch

from modules import devices
from modules.generation.params import GenerationParams
from tests.support.engine import make_engine, tiny_data
from tests.support.generation import psnr


@pytest.fixture(scope="module")
def engine(tiny_dir, tmp_path_factory):
    e = make_engine(tiny_data(tiny_dir, tmp_path_factory.mktemp("bf16")))
    yield e
    e.queue.stop()


def gen(engine, backend):
    return engine.txt2img(GenerationParams(
        prompt="a red circle on a blue background", negative_prompt="green", width=64, height=64, steps=4,
        sampler_name="Euler a", seed=7, save_images=False, override_settings={"unet_backend": backend}))


def computed_types(engine, backend) -> tuple[object, set]:
    """A job's result, and the types the U-Net's first convolution computed in during it."""
    gen(engine, "PyTorch")  # loads the model
    seen: set = set()
    conv = engine.checkpoints.current.unet.conv_in
    handle = conv.register_forward_hook(lambda _m, _args, out: seen.add(out.dtype))
    try:
        return gen(engine, backend), seen
    finally:
        handle.remove()


def test_bf16_computes_in_bfloat16_where_the_cpu_can_and_switching_back_is_exact(engine):
    exact = gen(engine, "PyTorch").images[0]
    result, seen = computed_types(engine, "PyTorch bf16")
    if devices.cpu_has_bf16():
        assert seen == {torch.bfloat16} and not result.warnings
        assert psnr(result.images[0], exact) > 20  # close, not exact
    else:  # emulated bfloat16 would be slower than float32: the job runs as usual and says so
        assert seen == {torch.float32}
        assert any("does not compute bfloat16 in hardware" in w for w in result.warnings), result.warnings
        assert result.images[0].tobytes() == exact.tobytes()
    again, seen = computed_types(engine, "PyTorch")
    assert seen == {torch.float32} and again.images[0].tobytes() == exact.tobytes()


@pytest.mark.parametrize("flags, native", [
    ("fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni", True),  # AMD Zen 4, Intel Cooper Lake
    ("fpu avx512f amx_bf16 amx_tile amx_int8", True),  # Intel Sapphire Rapids
    ("fpu sse2 avx2 avx512f avx512bw avx512_vnni", False),  # AVX-512 without BF16: emulated
    ("fp asimd evtstrm aes", False),  # an ARM server without BF16
])
def test_cpu_has_bf16_reads_the_cpu_flags(flags, native):
    cpuinfo = f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert devices.cpu_has_bf16(cpuinfo) is native
    assert devices.cpu_has_bf16("") is False  # nothing to read (not Linux)
