"""Seeds and noise, following AUTOMATIC1111's rules.

Every image has its own generator seeded with its own seed; its starting noise is the first draw and
any per-step noise (ancestral samplers) the following ones. So image k of a batch is the same image
as seed+k generated alone. Sources (A1111's "Random number generator source" setting):

- CPU: a CPU torch generator; the noise is moved to the device afterwards, so one seed gives the same
  image on CPU, CUDA and MPS.
- GPU: the device's own torch generator (CPU where there is no CUDA/MPS device).
- NV: the numbers an NVIDIA GPU's torch.randn gives for the seed, computed on the CPU with our
  Philox4x32-10 below, so any machine reproduces images made on NVIDIA cards with the GPU source.
"""

from __future__ import annotations

import random

import numpy as np
import torch

MAX_SEED = 4294967294  # A1111 draws random seeds below this
SOURCES = ("CPU", "GPU", "NV")


# The largest seed a generator takes: torch.Generator.manual_seed and the NV source's Philox key are 64-bit
# (A1111's limit too: a larger seed fails there when the generator is made).
LARGEST_SEED = 2**64 - 1


def seed_problem(seed: int, subseed: int, subseed_strength: float, count: int, ensd: int = 0) -> str | None:
    """Why a job's seeds cannot all be made (None when they can), naming the field: every image's seed
    (seed + i, or a random one below MAX_SEED for -1), that seed + ENSD for the per-step noise, and with a
    variation strength every variation seed must be at most LARGEST_SEED."""
    n = max(count, 1)
    others = f" + {n - 1} (the batch's other images)" if n > 1 else ""
    largest = f"the largest seed, {LARGEST_SEED} (2^64 - 1)"
    top = (seed if seed != -1 else MAX_SEED - 1) + n - 1
    if top > LARGEST_SEED:
        return f"seed: {seed}{others} is larger than {largest}; -1 picks a random one"
    if ensd and top + ensd > LARGEST_SEED:
        return f"eta_noise_seed_delta: {ensd} added to the seeds (up to {top}) is larger than {largest}"
    if subseed_strength > 0 and (subseed if subseed != -1 else MAX_SEED - 1) + n - 1 > LARGEST_SEED:
        return f"subseed: {subseed}{others} is larger than {largest}; -1 picks a random one"
    return None


def fix_seed(seed: int | float | str | None) -> int:
    """-1, None or an empty/non-numeric value means a fresh random seed."""
    try:
        value = int(seed) if seed not in (None, "") else -1
    except (TypeError, ValueError):
        value = -1
    return random.randrange(MAX_SEED) if value == -1 else value


# --- NV: Philox4x32-10 and Box-Muller, as cuRAND/torch.cuda use them for randn ----------------------

_PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # round multipliers
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # key increments (golden ratio, sqrt(3) - 1)
_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Ten Philox rounds over many counters at once. `counter` (4, n) and `key` (2, n) hold 32-bit
    values in uint64 arrays; returns the (4, n) outputs the same way."""
    c = [counter[i].copy() for i in range(4)]
    k0, k1 = key[0].copy(), key[1].copy()
    for r in range(10):
        if r:
            k0 = (k0 + np.uint64(_PHILOX_W[0])) & _MASK32
            k1 = (k1 + np.uint64(_PHILOX_W[1])) & _MASK32
        p0 = c[0] * np.uint64(_PHILOX_M[0])  # 32 x 32 bits fits in 64
        p1 = c[2] * np.uint64(_PHILOX_M[1])
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & _MASK32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & _MASK32]
    return np.stack(c)


_INV_2_32 = np.float32(2.3283064e-10)
_INV_2_32_2PI = np.float32(2.3283064e-10 * 6.2831855)


class PhiloxGenerator:
    """A generator giving for a seed the normal numbers torch.randn gives on an NVIDIA GPU: number i of
    call k comes from Philox4x32-10 with key = the 64-bit seed and counter (k, 0, i, 0); the first two
    outputs become one normal number by Box-Muller (the sine branch)."""

    device = torch.device("cpu")

    def __init__(self, seed: int):
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.offset = 0

    def manual_seed(self, seed: int) -> "PhiloxGenerator":
        self.seed, self.offset = int(seed) & 0xFFFFFFFFFFFFFFFF, 0
        return self

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        n = int(np.prod(shape))
        counter = np.zeros((4, n), dtype=np.uint64)
        counter[0] = self.offset
        counter[2] = np.arange(n, dtype=np.uint64)
        key = np.empty((2, n), dtype=np.uint64)
        key[0], key[1] = self.seed & 0xFFFFFFFF, self.seed >> 32
        self.offset += 1
        out = philox4x32_10(counter, key)
        u = out[0].astype(np.float64) * _INV_2_32 + _INV_2_32 / 2
        v = out[1].astype(np.float64) * _INV_2_32_2PI + _INV_2_32_2PI / 2
        normal = np.sqrt(-2.0 * np.log(u)) * np.sin(v)
        return torch.from_numpy(normal.astype(np.float32).reshape(shape))


Generator = torch.Generator | PhiloxGenerator


def generator_device(source: str, device: torch.device) -> torch.device:
    if source == "GPU" and device.type in ("cuda", "mps"):
        return device
    return torch.device("cpu")


def create_generator(seed: int, source: str, device: torch.device) -> Generator:
    if source == "NV":
        return PhiloxGenerator(seed)
    return torch.Generator(generator_device(source, device)).manual_seed(int(seed))


def create_generators(seeds: list[int], source: str, device: torch.device) -> list[Generator]:
    return [create_generator(s, source, device) for s in seeds]


def randn(generator: Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """The generator's next float32 draw of `shape`, on the generator's device."""
    if isinstance(generator, PhiloxGenerator):
        return generator.randn(shape)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)


def draw(generators: list[Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """One draw per image, stacked (N, *shape) on `device`."""
    return torch.stack([randn(g, shape).to(device) for g in generators])


def initial_noise(generators: list[Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """One (C, H, W) float32 draw per generator, stacked and moved to `device`."""
    return draw(generators, shape, device)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation of two (C, H, W) noises, vectors taken along dim 1 (columns of a
    channel). Nearly parallel noises fall back to A1111's linear blend, which weighs `low` by `val`."""
    low_dir = low / torch.norm(low, dim=1, keepdim=True)
    high_dir = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_dir * high_dir).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    return ((torch.sin((1.0 - val) * omega) / sin_omega).unsqueeze(1) * low
            + (torch.sin(val * omega) / sin_omega).unsqueeze(1) * high)


def image_noise(seeds: list[int], generators: list[Generator], shape: tuple[int, int, int], device: torch.device,
                source: str, subseeds: list[int] | None = None, subseed_strength: float = 0.0,
                resize_from: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """A1111's starting noise for a batch. Plain: each image's generator's first draw. With a variation
    seed: slerp(strength, noise(seed), noise(subseed)). With "resize seed from" W x H (pixels): the noise
    is made at that size and pasted, centred (or centre-cropped), into the image's own noise, which is
    still drawn from its generator so the per-step noise that follows is the same."""
    w_from, h_from = resize_from
    small = (shape[0], h_from // 8, w_from // 8) if w_from > 0 and h_from > 0 else shape
    out = []
    for i, (seed, gen) in enumerate(zip(seeds, generators)):
        noise = randn(gen, shape) if small == shape else randn(create_generator(seed, source, device), small)
        if subseeds is not None and subseed_strength != 0:
            subseed = subseeds[i] if i < len(subseeds) else 0
            noise = slerp(subseed_strength, noise, randn(create_generator(subseed, source, device), small))
        if small != shape:
            full = randn(gen, shape)
            dx, dy = (shape[2] - small[2]) // 2, (shape[1] - small[1]) // 2
            w = small[2] if dx >= 0 else small[2] + 2 * dx
            h = small[1] if dy >= 0 else small[1] + 2 * dy
            tx, ty, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
            full[:, ty:ty + h, tx:tx + w] = noise[:, sy:sy + h, sx:sx + w]
            noise = full
        out.append(noise.to(device))
    return torch.stack(out)


def batch_seeds(seed: int, subseed: int, subseed_strength: float, count: int) -> tuple[list[int], list[int]]:
    """A1111's seeds for a job of `count` images: seed + i each (all the same seed when a variation
    strength is set, the variation seeds then counting up instead)."""
    seeds = [seed + (i if subseed_strength == 0 else 0) for i in range(count)]
    return seeds, [subseed + i for i in range(count)]


class BrownianNoise:
    """Noise for the SDE samplers from one Brownian tree per image, seeded with the image's seed and
    spanning the schedule's noise levels, as A1111 does so that an image does not depend on its batch
    or on the number of steps' exact placement. As in A1111 (k-diffusion's BatchedBrownianTree over
    zeros_like(x)), the trees live on the latent's device and dtype whatever the RNG source, so on a GPU
    their numbers are that GPU's."""

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]):
        import torchsde

        positive = sigmas[sigmas > 0]
        self.low, self.high = positive.min().to(x.device), sigmas.max().to(x.device)
        w0 = torch.zeros(x.shape[1:], dtype=x.dtype, device=x.device)
        self.trees = [torchsde.BrownianTree(self.low, w0, self.high, entropy=int(s)) for s in seeds]
        self.device = x.device

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a, b = torch.as_tensor(sigma).to(self.device), torch.as_tensor(sigma_next).to(self.device)
        t0, t1, sign = (a, b, 1) if a < b else (b, a, -1)
        w = torch.stack([tree(t0, t1) for tree in self.trees]) * sign
        return w / (b - a).abs().sqrt()
