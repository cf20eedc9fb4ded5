"""Seeds the way A1111 uses them: RNG sources (CPU, GPU, NV's Philox), variation seeds, seed resize,
ENSD, per-image noise in batches, and the infotext / API fields that carry them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.generation import rng
from tests.support.generation import engine, params  # noqa: F401  (fixture)

SHAPE = (4, 8, 8)
CPU = torch.device("cpu")


def test_nv_source_gives_nvidia_randn_values():
    # torch.randn(..., device="cuda") after manual_seed(42) on NVIDIA GPUs (also stable-diffusion.cpp's "cuda" RNG)
    first = rng.PhiloxGenerator(42).randn((4,))
    assert first.tolist() == pytest.approx([0.1940, 2.1614, -0.1721, 0.8491], abs=1e-4)


def test_philox_rounds_match_the_published_known_answer():
    # Random123's known-answer test for Philox4x32-10: counter and key all ones bits
    ones = np.full((4, 1), 0xFFFFFFFF, dtype=np.uint64)
    out = rng.philox4x32_10(ones, np.full((2, 1), 0xFFFFFFFF, dtype=np.uint64))[:, 0]
    assert [int(v) for v in out] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    zeros = rng.philox4x32_10(np.zeros((4, 1), dtype=np.uint64), np.zeros((2, 1), dtype=np.uint64))[:, 0]
    assert [int(v) for v in zeros] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_nv_generator_continues_like_a_cuda_generator():
    g = rng.PhiloxGenerator(7)
    a, b = g.randn(SHAPE), g.randn(SHAPE)
    assert not torch.equal(a, b)  # the second call uses the next counter offset
    assert torch.equal(a, rng.PhiloxGenerator(7).randn(SHAPE))
    assert torch.equal(rng.PhiloxGenerator(7).randn((2, 3)).flatten(), rng.PhiloxGenerator(7).randn((6,)))
    big = rng.PhiloxGenerator(3).randn((64, 64, 16))
    assert abs(big.mean()) < 0.02 and abs(big.std() - 1) < 0.02


def test_sources_on_cpu():
    cpu = rng.draw(rng.create_generators([5], "CPU", CPU), SHAPE, CPU)[0]
    assert torch.equal(cpu, torch.randn(SHAPE, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(rng.draw(rng.create_generators([5], "GPU", CPU), SHAPE, CPU)[0], cpu)  # no GPU here
    assert torch.equal(rng.draw(rng.create_generators([5], "NV", CPU), SHAPE, CPU)[0],
                       rng.PhiloxGenerator(5).randn(SHAPE))


def test_variation_seed_is_slerp_and_strength_ends_are_the_two_seeds():
    def noise(strength, seeds=(10,), subseeds=(20,)):
        gens = rng.create_generators(list(seeds), "CPU", CPU)
        return rng.image_noise(list(seeds), gens, SHAPE, CPU, "CPU", list(subseeds), strength)[0]

    base = torch.randn(SHAPE, generator=torch.Generator().manual_seed(10))
    sub = torch.randn(SHAPE, generator=torch.Generator().manual_seed(20))
    assert torch.equal(noise(0.0), base)
    assert torch.allclose(noise(1.0), sub, atol=1e-5)
    half = noise(0.5)
    assert not torch.allclose(half, base) and not torch.allclose(half, sub)
    # spherical, not linear: the norm stays that of unit noise instead of shrinking by ~1/sqrt(2)
    assert abs(half.norm() / base.norm() - 1) < 0.1
    assert rng.batch_seeds(10, 20, 0.0, 3) == ([10, 11, 12], [20, 21, 22])
    assert rng.batch_seeds(10, 20, 0.3, 3) == ([10, 10, 10], [20, 21, 22])


def test_seed_resize_pastes_the_smaller_noise_in_the_centre():
    gens = rng.create_generators([3], "CPU", CPU)
    out = rng.image_noise([3], gens, (4, 12, 16), CPU, "CPU", resize_from=(64, 64))[0]  # 8x8 latent into 12x16
    small = torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(3))
    assert torch.equal(out[:, 2:10, 4:12], small)
    own = torch.randn((4, 12, 16), generator=torch.Generator().manual_seed(3))
    assert torch.equal(out[:, :2], own[:, :2])  # outside: the target size's own noise for the seed
    crop = rng.image_noise([3], rng.create_generators([3], "CPU", CPU), (4, 4, 4), CPU, "CPU", resize_from=(64, 64))[0]
    assert torch.equal(crop, small[:, 2:6, 2:6])  # a larger "from" size is centre-cropped


def test_engine_variation_resize_ensd_infotext_and_info(engine):  # noqa: F811
    plain = engine.txt2img(params(seed=100))
    varied = engine.txt2img(params(seed=100, subseed=7, subseed_strength=0.3, batch_size=2))
    assert varied.seeds == [100, 100]
    assert "Variation seed: 7, Variation seed strength: 0.3" in varied.infotexts[0]
    assert "Variation seed: 8," in varied.infotexts[1]
    assert varied.info["all_subseeds"] == [7, 8] and varied.info["subseed_strength"] == 0.3
    assert varied.images[0].tobytes() != plain.images[0].tobytes()
    zero = engine.txt2img(params(seed=100, subseed=7, subseed_strength=0.0))
    assert zero.images[0].tobytes() == plain.images[0].tobytes() and "Variation" not in zero.infotexts[0]

    resized = engine.txt2img(params(seed=100, seed_resize_from_w=48, seed_resize_from_h=48))
    assert "Seed resize from: 48x48" in resized.infotexts[0] and resized.info["seed_resize_from_w"] == 48

    engine.options.update({"eta_noise_seed_delta": 31337})
    ancestral = engine.txt2img(params(seed=100))
    assert "ENSD: 31337" in ancestral.infotexts[0]
    assert ancestral.images[0].tobytes() != plain.images[0].tobytes()  # per-step noise changed
    euler = engine.txt2img(params(seed=100, sampler_name="Euler"))
    assert "ENSD" not in euler.infotexts[0]
    engine.options.update({"eta_noise_seed_delta": 0})
    assert euler.images[0].tobytes() == engine.txt2img(params(seed=100, sampler_name="Euler")).images[0].tobytes()

    eta = engine.txt2img(params(seed=100, eta=0.5))
    assert "Eta: 0.5" in eta.infotexts[0] and eta.images[0].tobytes() != plain.images[0].tobytes()


@pytest.mark.parametrize("sampler", ["DPM++ SDE", "DPM2 a"])
def test_image_k_of_a_batch_is_seed_plus_k_for_sde_and_ancestral(engine, sampler):  # noqa: F811
    batch = engine.txt2img(params(sampler_name=sampler, batch_size=2, seed=40, steps=4))
    alone = engine.txt2img(params(sampler_name=sampler, seed=41, steps=4))
    diff = np.abs(np.asarray(batch.images[1], dtype=int) - np.asarray(alone.images[0], dtype=int))
    assert diff.max() <= 2  # U-Net rounding depends on batch size; the noise does not


def test_nv_source_setting(engine):  # noqa: F811
    engine.options.update({"randn_source": "NV"})
    a = engine.txt2img(params(seed=5))
    b = engine.txt2img(params(seed=5))
    engine.options.update({"randn_source": "CPU"})
    c = engine.txt2img(params(seed=5))
    assert a.images[0].tobytes() == b.images[0].tobytes() != c.images[0].tobytes()
    assert "RNG: NV" in a.infotexts[0]


def test_schedule_settings_reach_the_image_and_the_infotext(engine):  # noqa: F811
    plain = engine.txt2img(params(sampler_name="DPM++ 2M", seed=3))
    engine.options.update({"rho": 5.0, "sigma_max": 10.0})
    changed = engine.txt2img(params(sampler_name="DPM++ 2M", seed=3))
    engine.options.update({"rho": 0.0, "sigma_max": 0.0})
    assert "Schedule max sigma: 10, Schedule rho: 5" in changed.infotexts[0]
    assert changed.images[0].tobytes() != plain.images[0].tobytes() and "Schedule rho" not in plain.infotexts[0]
