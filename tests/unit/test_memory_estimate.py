"""The estimate a job is checked against before it samples (modules/generation/memory.py): its phases, the
tiled VAE when that makes it fit, swap, and a refusal whose suggestions are the largest that fit."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from modules.generation import context, memory, vae_tiling
from modules.generation.params import GenerationParams, Img2ImgParams
from modules.settings import Settings

GIB = memory.GIB
SD1 = memory.ModelMemory("sd1")


def ctx(tiling: str = "Auto", **kw) -> context.JobContext:
    base = dict(prompt="a cat", width=512, height=512, steps=4, sampler_name="Euler a", seed=1)
    return context.resolve(GenerationParams(**{**base, **kw}), Settings(vae_tiling=tiling))


def test_phases_follow_the_job_and_the_peak_is_the_largest_one():
    plain = memory.phases(ctx(), SD1, vae_tiling.VaeTiling())
    assert [p.what.split(" ")[0:2] for p in plain] == [["sampling", "512x512,"], ["VAE", "decode"]]
    assert plain[0].bytes == 2 * 64 * 64 * memory.UNET_BYTES_PER_LATENT_PIXEL["sd1"]  # CFG: two rows
    assert plain[1].bytes == vae_tiling.decode_peak_bytes(512, 512, tiled=False) + 512 * 512 * 16  # one at a time
    # Hires. fix with a pixel upscaler: decode, encode at the target, sample there, decode there
    hr = memory.phases(ctx(enable_hr=True, hr_scale=2, hr_upscaler="Lanczos", denoising_strength=0.5), SD1,
                       vae_tiling.VaeTiling())
    assert [p.what for p in hr][1:] == ["VAE decode at 512x512", "VAE encode at 1024x1024, tiled",
                                        "sampling 1024x1024, batch size 1 (prompt and negative prompt in one batch)",
                                        "VAE decode at 1024x1024, tiled"]
    latent = memory.phases(ctx(enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.5), SD1,
                           vae_tiling.VaeTiling())
    assert len(latent) == 3  # no decode and encode between the passes
    img2img = Img2ImgParams(prompt="a cat", width=512, height=512, steps=4, init_images=[Image.new("RGB", (64, 64))],
                            batch_size=2)
    phases = memory.phases(context.resolve(img2img, Settings()), SD1, vae_tiling.VaeTiling())
    assert phases[0].what == "VAE encode at 512x512" and len(phases) == 3
    # TAESD decodes: no VAE phase; one after the other: half the rows; plain attention: its N^2 matrix
    taesd = context.resolve(GenerationParams(prompt="a", width=512, height=512),
                            Settings(sd_vae_decode_method="TAESD"))
    assert len(memory.phases(taesd, SD1, vae_tiling.VaeTiling())) == 1
    apart = memory.sampling(512, 512, 1, memory.ModelMemory("sd1", batch_cond_uncond=False))
    assert apart.bytes * 2 == plain[0].bytes
    plain_attention = memory.sampling(512, 512, 1, memory.ModelMemory("sd1", attention="plain"))
    assert plain_attention.bytes - plain[0].bytes == 2 * 2 * 8 * 4096 * 4096 * 4
    assert memory.sampling(512, 512, 1, memory.ModelMemory("sd1", unet_bytes=2)).bytes * 2 == plain[0].bytes


def test_a_job_that_fits_runs_as_asked():
    job = ctx()
    fitted = memory.fit(job, SD1, 64 * GIB)
    assert fitted.tiling == job.vae_tiling and not fitted.tiled_to_fit and fitted.note() is None


def test_the_tiled_vae_is_switched_on_when_it_makes_the_job_fit():
    job = ctx(width=960, height=960)  # Auto does not tile below 1024x1024
    untiled = memory.peak(job, SD1, job.vae_tiling).bytes
    tiled = memory.peak(job, SD1, vae_tiling.VaeTiling("Always")).bytes
    assert tiled < untiled
    fitted = memory.fit(job, SD1, (tiled + untiled) // 2)
    assert fitted.tiled_to_fit and fitted.tiling.mode == "Always" and fitted.tiling.tile == job.vae_tiling.tile
    assert "VAE decodes in tiles" in fitted.note()
    # a VAE that cannot tile, or a user who said Never: refused instead
    never = ctx("Never", width=960, height=960)
    for model, job_ in ((memory.ModelMemory("sd1", vae_tiles=False), job), (SD1, never)):
        with pytest.raises(memory.NotEnoughMemory):
            memory.fit(job_, model, (tiled + untiled) // 2)


def test_tiling_decodes_whole_and_a_refusal_says_why():
    # A1111's Tiling (the request's `tiling`; ctx's own `tiling` is the VAE's mode): the tiled VAE would not wrap
    job = context.resolve(GenerationParams(prompt="a cat", width=960, height=960, steps=4, tiling=True), Settings())
    # the decode's padded copies (bench/vae_memory.py --circular: +26-27 %), beside the finished image it holds
    expected = int(vae_tiling.decode_peak_bytes(960, 960, tiled=False) * 1.27) + 960 * 960 * 16
    assert memory.phases(job, SD1, job.vae_tiling)[-1].bytes == expected
    untiled = memory.peak(job, SD1, job.vae_tiling).bytes
    tiled = memory.peak(job, SD1, vae_tiling.VaeTiling("Always")).bytes
    with pytest.raises(memory.NotEnoughMemory, match="With Tiling the VAE decodes the whole image at once"):
        memory.fit(job, SD1, (tiled + untiled) // 2)
    with pytest.raises(memory.NotEnoughMemory) as refused:
        memory.fit(ctx(width=960, height=960), SD1, tiled // 2)
    assert "Tiling" not in str(refused.value)


def test_swap_lets_a_cpu_job_run_with_a_warning():
    job = ctx(width=960, height=960)
    tiled = memory.peak(job, SD1, vae_tiling.VaeTiling("Always")).bytes
    fitted = memory.fit(job, SD1, tiled - GIB, swap=2 * GIB)
    assert fitted.swaps and fitted.tiled_to_fit and "swap" in fitted.note()
    with pytest.raises(memory.NotEnoughMemory, match="with 0.5 GiB of swap space"):
        memory.fit(job, SD1, tiled - GIB, swap=GIB // 2)


@pytest.mark.parametrize("kw", [dict(width=1024, height=768, batch_size=4),
                                dict(width=512, height=512, batch_size=8, enable_hr=True, hr_scale=2,
                                     hr_upscaler="Latent", denoising_strength=0.5),
                                dict(width=640, height=512, batch_size=2, enable_hr=True, hr_resize_x=1920,
                                     hr_resize_y=1536, hr_upscaler="Lanczos", denoising_strength=0.5)])
def test_a_refusal_names_the_largest_batch_and_size_that_fit(kw):
    job = ctx(**kw)
    free = 3 * GIB
    with pytest.raises(memory.NotEnoughMemory) as refused:
        memory.fit(job, SD1, free)
    text = str(refused.value)
    assert text.startswith("Not enough memory for this job: its peak is about ") and "3.0 GiB is free" in text
    tiled = vae_tiling.VaeTiling("Always")
    p = job.params

    def fits(**changes) -> bool:
        return memory.peak(memory._with(job, p, **changes), SD1, tiled).bytes <= free

    batch = re.search(r"batch size (\d+) at (\d+)x(\d+)", text)
    if batch:
        assert fits(batch_size=int(batch[1])) and not fits(batch_size=int(batch[1]) + 1)
    size = re.search(r"(\d+)x(\d+) at batch size (\d+)", text)
    assert size and int(size[3]) == p.batch_size
    w, h = int(size[1]), int(size[2])
    assert w % 8 == 0 and h % 8 == 0 and abs(w / h - p.width / p.height) < 0.05
    longer = max(p.width, p.height)

    def at(side: int) -> dict:  # the job's shape with its longer side `side` (a pixel Hires. size shrinks with it)
        names = ("width", "height", "hr_resize_x", "hr_resize_y")
        return {k: round(getattr(p, k) * side / longer / 8) * 8 for k in names if getattr(p, k)}

    assert (at(max(w, h))["width"], at(max(w, h))["height"]) == (w, h)
    assert fits(**at(max(w, h))) and not fits(**at(max(w, h) + 8))


def test_nothing_fits_in_almost_no_memory():
    with pytest.raises(memory.NotEnoughMemory, match="Not even the smallest size fits"):
        memory.fit(ctx(), SD1, 100 * memory.MIB)


def test_a_containers_memory_limit_counts_as_what_is_free():
    from modules import devices

    def files(table):
        return lambda path: table.get(path)

    v2 = {"/sys/fs/cgroup/memory.max": "8589934592\n", "/sys/fs/cgroup/memory.current": "3221225472\n",
          "/sys/fs/cgroup/memory.stat": "anon 2147483648\ninactive_file 1073741824\nactive_file 0\n"}
    assert devices._cgroup_free(files(v2)) == 8 * GIB - (3 * GIB - GIB)  # page cache that can be dropped is free
    assert devices._cgroup_free(files({**v2, "/sys/fs/cgroup/memory.max": "max\n"})) is None
    v1 = {"/sys/fs/cgroup/memory/memory.limit_in_bytes": "4294967296", "/sys/fs/cgroup/memory/memory.usage_in_bytes":
          "1073741824", "/sys/fs/cgroup/memory/memory.stat": "cache 0\ntotal_inactive_file 0\n"}
    assert devices._cgroup_free(files(v1)) == 3 * GIB
    assert devices._cgroup_free(files({**v1, "/sys/fs/cgroup/memory/memory.limit_in_bytes": str(2**63 - 4096)})) is None
    assert devices._cgroup_free(files({})) is None
    assert devices.free_memory(torch.device("cpu")) > 0


def test_a_long_prompts_conditioning_counts_and_a_refusal_says_it_is_the_prompt():
    """The security review's case: a prompt at the 65536-character cap in CJK is about 2600 chunks, 1.6 GB of
    SDXL context (and one such context for each distinct text prompt editing makes), which the estimate left
    out. Held beside every phase; each U-Net call's rows carry it too."""
    sdxl, job = memory.ModelMemory("sdxl"), ctx(width=1024, height=1024)
    short = memory.TextMemory(positions=2 * 77, longest=77, width=2048)
    long = memory.TextMemory(positions=2 * 2600 * 77, longest=2600 * 77, width=2048)
    assert long.held_bytes == 2 * 2600 * 77 * 2048 * 4
    plain = memory.peak(job, sdxl, job.vae_tiling)
    assert memory.peak(job, sdxl, job.vae_tiling, short).bytes == plain.bytes + short.held_bytes  # no more
    sampling = memory.sampling(1024, 1024, 1, sdxl, long)
    assert sampling.bytes - memory.sampling(1024, 1024, 1, sdxl).bytes == 2 * 2600 * 77 * (2048 + 2 * 1280) * 4
    assert sampling.what.endswith("prompts of 195000 tokens")

    free = plain.bytes + GIB  # the image fits; the prompts' 3.3 GB do not
    assert memory.fit(job, sdxl, free).peak == plain
    with pytest.raises(memory.NotEnoughMemory, match=r"The prompts are too long for it: their conditioning alone is "
                                                     r"about 3\.1 GiB \(5200 chunks of 75 tokens; the longest prompt "
                                                     r"has 195000 tokens\)\. Shorten the prompt"):
        memory.fit(job, sdxl, free, text=long)
    # a prompt that leaves room for a smaller image gets the usual suggestions, which count it
    with pytest.raises(memory.NotEnoughMemory, match="What fits: ") as refused:
        memory.fit(job, sdxl, plain.bytes, text=short)
    size = re.search(r"(\d+)x(\d+) at batch size 1", str(refused.value))
    smaller = memory._with(job, job.params, width=int(size[1]), height=int(size[2]))
    assert memory.peak(smaller, sdxl, vae_tiling.VaeTiling("Always"), short).bytes <= plain.bytes  # tiled to fit


def test_and_sub_prompts_are_rows_of_each_u_net_call():
    one = memory.sampling(512, 512, 2, SD1)
    three = memory.sampling(512, 512, 2, SD1, memory.TextMemory(parts=3))  # 2 images x (3 sub-prompts + negative)
    assert three.bytes == 2 * one.bytes and three.what.endswith("3 sub-prompts")
    apart = memory.ModelMemory("sd1", batch_cond_uncond=False)  # the negative prompt's rows in a call of their own
    assert memory.sampling(512, 512, 2, apart, memory.TextMemory(parts=3)).bytes == 3 * one.bytes // 2
    plain = memory.ModelMemory("sd1", attention="plain")
    longer = memory.TextMemory(positions=4 * 770, longest=770)  # plain attention holds the cross-attention's too
    assert (memory.sampling(64, 64, 1, plain, longer).bytes - memory.sampling(64, 64, 1, plain).bytes
            == 2 * 2 * plain.heads * 64 * 770 * 4)
