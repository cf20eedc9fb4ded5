"""Every sampler, written as k-diffusion states them (A1111 runs k-diffusion's): short functions of
(denoise, x, sigmas, noise, step) with no hidden state, each taking as keywords exactly the options it
uses (no catch-all, so a misspelt or misrouted option fails instead of being ignored).

`denoise(x, sigma)` is the guided model's prediction of the clean latent x0 for a state
x = x0 + sigma * noise ("variance exploding" units, as A1111 holds it). `noise(sigma, sigma_next)`
gives unit normal noise shaped like x (per-image generators, or a Brownian tree for the SDE samplers).
`step(i, x, x0)` reports each finished step: the new state and the x0 prediction of the step's latest
model call (what a live preview shows, and what a stopped batch is decoded from). The arithmetic
follows k-diffusion's order of operations so that the same inputs give A1111's numbers to float
rounding.

Notation: t = -log(sigma) (log signal-to-noise time), h = t_next - t.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Noise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Step = Callable[[int, torch.Tensor, torch.Tensor], None]  # (i, x, x0)


def _slope(x, sigma, x0):
    """dx/dsigma of the probability-flow ODE."""
    return (x - x0) / sigma


def ancestral_split(sigma, sigma_next, eta: float = 1.0):
    """Split the move sigma -> sigma_next into a deterministic part down to `down` and fresh noise of
    standard deviation `up`, with down^2 + up^2 = sigma_next^2 (eta = 0: no noise)."""
    if not eta:
        return sigma_next, 0.0
    up = min(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    down = (sigma_next ** 2 - up ** 2) ** 0.5
    return down, up


def _t(sigma):
    return sigma.log().neg()


def _sigma(t):
    return t.neg().exp()


def _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al.'s optional noise increase before a step: returns (x, sigma_hat). A draw is taken on
    every step when churn is on, as A1111 does, so the draws line up with its generators."""
    if not s_churn:
        return x, sigmas[i]
    gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    eps = noise(sigmas[i], sigmas[i + 1]) * s_noise
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def euler(denoise: Denoise, x, sigmas, noise: Noise, step: Step, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
          s_noise=1.0):
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        x0 = denoise(x, sigma_hat)
        x = x + _slope(x, sigma_hat, x0) * (sigmas[i + 1] - sigma_hat)
        step(i, x, x0)
    return x


def euler_ancestral(denoise: Denoise, x, sigmas, noise: Noise, step: Step, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i])
        down, up = ancestral_split(sigmas[i], sigmas[i + 1], eta)
        x = x + _slope(x, sigmas[i], x0) * (down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * up
        step(i, x, x0)
    return x


def heun(denoise: Denoise, x, sigmas, noise: Noise, step: Step, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
         s_noise=1.0):
    """Heun's second-order method; the last step, to sigma 0, is an Euler step."""
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        x0 = denoise(x, sigma_hat)
        d = _slope(x, sigma_hat, x0)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_euler = x + d * dt
            x0 = denoise(x_euler, sigmas[i + 1])
            x = x + (d + _slope(x_euler, sigmas[i + 1], x0)) / 2 * dt
        step(i, x, x0)
    return x


def dpm_2(denoise: Denoise, x, sigmas, noise: Noise, step: Step, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
          s_noise=1.0):
    """DPM-Solver-2 in sigma: the slope is taken again at the geometric midpoint of the step."""
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        x0 = denoise(x, sigma_hat)
        d = _slope(x, sigma_hat, x0)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_mid = x + d * (sigma_mid - sigma_hat)
            x0 = denoise(x_mid, sigma_mid)
            x = x + _slope(x_mid, sigma_mid, x0) * (sigmas[i + 1] - sigma_hat)
        step(i, x, x0)
    return x


def dpm_2_ancestral(denoise: Denoise, x, sigmas, noise: Noise, step: Step, eta=1.0, s_noise=1.0):
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i])
        down, up = ancestral_split(sigmas[i], sigmas[i + 1], eta)
        d = _slope(x, sigmas[i], x0)
        if down == 0:
            x = x + d * (down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(down.log(), 0.5).exp()
            x_mid = x + d * (sigma_mid - sigmas[i])
            x0 = denoise(x_mid, sigma_mid)
            x = x + _slope(x_mid, sigma_mid, x0) * (down - sigmas[i])
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * up
        step(i, x, x0)
    return x


def lms_coefficient(order: int, s: np.ndarray, i: int, j: int) -> float:
    """Integral over [s[i], s[i+1]] of the Lagrange basis polynomial that is 1 at s[i-j] and 0 at the
    other `order - 1` most recent levels: the weight of slope i-j in the linear multistep update.
    Integrated exactly (k-diffusion uses numerical quadrature; the two agree to ~1e-7)."""
    poly = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k != j:
            poly = poly * np.polynomial.Polynomial([-s[i - k], 1.0]) / (s[i - j] - s[i - k])
    antiderivative = poly.integ()
    return float(antiderivative(s[i + 1]) - antiderivative(s[i]))


def lms(denoise: Denoise, x, sigmas, noise: Noise, step: Step, order: int = 4):
    """Linear multistep: up to `order` previous slopes, weighted by integrating their interpolating
    polynomial over the step."""
    s = sigmas.detach().cpu().double().numpy()
    slopes: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i])
        slopes.append(_slope(x, sigmas[i], x0))
        slopes = slopes[-order:]
        k = min(i + 1, order)
        weights = [lms_coefficient(k, s, i, j) for j in range(k)]
        x = x + sum(w * d for w, d in zip(weights, reversed(slopes)))
        step(i, x, x0)
    return x


def dpmpp_2s_ancestral(denoise: Denoise, x, sigmas, noise: Noise, step: Step, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2S): a midpoint in log-SNR time, then ancestral noise."""
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i])
        down, up = ancestral_split(sigmas[i], sigmas[i + 1], eta)
        if down == 0:
            x = x + _slope(x, sigmas[i], x0) * (down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(down)
            h = t_next - t
            t_mid = t + 0.5 * h
            x_mid = (_sigma(t_mid) / _sigma(t)) * x - (-h * 0.5).expm1() * x0
            x0 = denoise(x_mid, _sigma(t_mid))
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * x0
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * up
        step(i, x, x0)
    return x


def dpmpp_sde(denoise: Denoise, x, sigmas, noise: Noise, step: Step, eta=1.0, s_noise=1.0, r=0.5):
    """DPM-Solver++ SDE: two stochastic substeps per step (the first to the fraction r of the step)."""
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = x + _slope(x, sigmas[i], x0) * (sigmas[i + 1] - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            down, up = ancestral_split(_sigma(t), _sigma(s), eta)
            s_ = _t(down)
            x_mid = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * x0
            x_mid = x_mid + noise(_sigma(t), _sigma(s)) * s_noise * up
            x0_mid = denoise(x_mid, _sigma(s))
            down, up = ancestral_split(_sigma(t), _sigma(t_next), eta)
            t_next_ = _t(down)
            x0_mix = (1 - fac) * x0 + fac * x0_mid
            x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * x0_mix
            x = x + noise(_sigma(t), _sigma(t_next)) * s_noise * up
            x0 = x0_mid
        step(i, x, x0)
    return x


def dpmpp_2m(denoise: Denoise, x, sigmas, noise: Noise, step: Step):
    """DPM-Solver++(2M): each step extrapolates x0 linearly from this and the previous prediction."""
    previous = None
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i])
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if previous is None or sigmas[i + 1] == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * x0
        else:
            r = (t - _t(sigmas[i - 1])) / h
            x0_ext = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * x0_ext
        previous = x0
        step(i, x, x0)
    return x


def dpmpp_2m_sde(denoise: Denoise, x, sigmas, noise: Noise, step: Step, eta=1.0, s_noise=1.0,
                 solver_type: str = "midpoint"):
    """DPM-Solver++(2M) SDE; `solver_type` "midpoint" or "heun" is how the previous x0 corrects the step."""
    previous, h_last = None, None
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i])
        h = None
        if sigmas[i + 1] == 0:
            x = x0
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            eta_h = eta * h
            decay = (-h - eta_h).expm1().neg()
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + decay * x0
            if previous is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (decay / (-h - eta_h) + 1) * (1 / r) * (x0 - previous)
                else:
                    x = x + 0.5 * decay * (1 / r) * (x0 - previous)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        previous, h_last = x0, h
        step(i, x, x0)
    return x


def dpmpp_3m_sde(denoise: Denoise, x, sigmas, noise: Noise, step: Step, eta=1.0, s_noise=1.0):
    """DPM-Solver++(3M) SDE: second and third order corrections from the two previous x0 predictions."""
    x0_1 = x0_2 = None
    h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        x0 = denoise(x, sigmas[i])
        h = None
        if sigmas[i + 1] == 0:
            x = x0
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * x0
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (x0 - x0_1) / r0
                d1_1 = (x0_1 - x0_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * ((x0 - x0_1) / (h_1 / h))
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        x0_1, x0_2 = x0, x0_1
        h_1, h_2 = h, h_1
        step(i, x, x0)
    return x


# --- DPM-Solver (Lu et al. 2022) in log-SNR time, for DPM fast and DPM adaptive -------------------

def _dpm_eps(denoise, x, t):
    """The model's (eps, x0) at time t."""
    x0 = denoise(x, _sigma(t))
    return (x - x0) / _sigma(t), x0


def _dpm_1(x, t, t_next, eps):
    return x - _sigma(t_next) * (t_next - t).expm1() * eps


def _dpm_2(denoise, x, t, t_next, eps, r1=0.5):
    """Second-order step: (x at t_next, x0 of its model call)."""
    h = t_next - t
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_1, x0_1 = _dpm_eps(denoise, u1, s1)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_1 - eps), x0_1


def _dpm_3(denoise, x, t, t_next, eps, eps_1=None, r1=1 / 3, r2=2 / 3):
    """Third-order step: (x at t_next, x0 of its last model call); `eps_1` may be the model's value at
    t + r1*h already computed by the caller."""
    h = t_next - t
    s1, s2 = t + r1 * h, t + r2 * h
    if eps_1 is None:
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_1, _ = _dpm_eps(denoise, u1, s1)
    u2 = (x - _sigma(s2) * (r2 * h).expm1() * eps
          - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_1 - eps))
    eps_2, x0_2 = _dpm_eps(denoise, u2, s2)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_2 - eps), x0_2


def _noise_move(t, t_next, t_end, eta):
    """For a stochastic DPM-Solver step: the time the deterministic part goes to and the noise to add."""
    if not eta:
        return t_next, 0.0
    down, _ = ancestral_split(_sigma(t), _sigma(t_next), eta)
    t_det = torch.minimum(t_end, _t(down))
    return t_det, (_sigma(t_next) ** 2 - _sigma(t_det) ** 2) ** 0.5


def dpm_fast(denoise: Denoise, x, sigmas, noise: Noise, step: Step, eta=0.0, s_noise=1.0):
    """DPM-Solver-fast: as many model calls as the schedule has steps (A1111 passes k-diffusion's `n` as
    that), spent on equal log-SNR intervals between the schedule's largest and smallest non-zero sigma,
    mostly third-order steps."""
    nfe = len(sigmas) - 1
    t_start, t_end = _t(sigmas.max()), _t(sigmas[sigmas > 0].min())
    m = nfe // 3 + 1
    ts = torch.linspace(t_start.item(), t_end.item(), m + 1)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_det, up = _noise_move(t, t_next, t_end, eta)
        eps, x0 = _dpm_eps(denoise, x, t)
        if order == 1:
            x = _dpm_1(x, t, t_det, eps)
        elif order == 2:
            x, x0 = _dpm_2(denoise, x, t, t_det, eps)
        else:
            x, x0 = _dpm_3(denoise, x, t, t_det, eps)
        x = x + up * s_noise * noise(_sigma(t), _sigma(t_next))
        step(i, x, x0)
    return x


def dpm_adaptive(denoise: Denoise, x, sigmas, noise: Noise, step: Step, eta=0.0, s_noise=1.0, order: int = 3,
                 rtol=0.05, atol=0.0078, h_init=0.05, accept_safety=0.81):
    """DPM-Solver-23 with adaptive step size: each step compares a second- and a third-order solution
    and an integral controller grows or shrinks the step; the step count does not apply (A1111 the same)."""
    t, t_end = _t(sigmas.max()), _t(sigmas[sigmas > 0].min())
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    h = h_init
    ctrl_order = 1.5 if eta else order
    inv_errs: list[float] = []
    x_prev = x
    n = 0
    while t < t_end - 1e-5:
        t_next = torch.minimum(t_end, t + h)
        t_det, up = _noise_move(t, t_next, t_end, eta)
        eps, _ = _dpm_eps(denoise, x, t)
        hh, r1 = t_det - t, 1 / 3
        s1 = t + r1 * hh  # the second-order solution's midpoint is the third-order one's first stage
        eps_1, _ = _dpm_eps(denoise, x - _sigma(s1) * (r1 * hh).expm1() * eps, s1)
        x_low = x - _sigma(t_det) * hh.expm1() * eps - _sigma(t_det) / (2 * r1) * hh.expm1() * (eps_1 - eps)
        x_high, x0 = _dpm_3(denoise, x, t, t_det, eps, eps_1=eps_1)
        scale = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / scale) / x.numel() ** 0.5
        inv = 1 / (float(error) + 1e-8)
        if not inv_errs:
            inv_errs = [inv, inv, inv]
        inv_errs[0] = inv
        factor = 1 + math.atan(inv_errs[0] ** (1 / ctrl_order) - 1)
        if factor >= accept_safety:
            inv_errs[2], inv_errs[1] = inv_errs[1], inv_errs[0]
            x_prev = x_low
            x = x_high + up * s_noise * noise(_sigma(t), _sigma(t_next))
            t = t_next
            step(n, x, x0)
            n += 1
        h *= factor
    return x


def restart_plan(sigmas: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A1111's Restart schedule (Xu et al. 2023): with 20 or more steps, some steps are kept back and
    spent going back up from sigma ~0.1 to ~2 and down again (once, or twice from 36 steps); the
    remaining steps follow a Karras schedule. Returns the (from, to) pairs in the order they run."""
    from modules.generation.schedules import karras

    steps = len(sigmas) - 1
    restart = None
    if steps >= 20:
        restart_steps, times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras(steps - restart_steps * times, sigmas[-2].item(), sigmas[0].item())
        restart = (int(torch.argmin(abs(sigmas - 0.1))), restart_steps + 1, times, 2.0)
    pairs = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if restart is not None and i + 1 == restart[0]:
            _, n, times, top = restart
            top_idx = int(torch.argmin(abs(sigmas - top)))
            if top_idx < i + 1:
                up = karras(n, sigmas[i + 1].item(), sigmas[top_idx].item())[:-1]
                for _ in range(times):
                    pairs.extend(zip(up[:-1], up[1:]))
    return pairs


def restart(denoise: Denoise, x, sigmas, noise: Noise, step: Step, s_noise=1.0):
    """Heun steps along `restart_plan`; where the plan goes back up in sigma, fresh noise raises x to
    the higher level first."""
    last = None
    for i, (sigma, sigma_next) in enumerate(restart_plan(sigmas)):
        if last is not None and last < sigma:
            x = x + noise(sigma, sigma_next) * s_noise * (sigma ** 2 - last ** 2) ** 0.5
        x0 = denoise(x, sigma)
        d = _slope(x, sigma, x0)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_euler = x + d * dt
            x0 = denoise(x_euler, sigma_next)
            x = x + (d + _slope(x_euler, sigma_next, x0)) / 2 * dt
        last = sigma_next
        step(i, x, x0)
    return x


SAMPLE_FUNCTIONS = {
    "euler": euler, "euler_ancestral": euler_ancestral, "heun": heun, "dpm_2": dpm_2,
    "dpm_2_ancestral": dpm_2_ancestral, "lms": lms, "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_sde": dpmpp_sde, "dpmpp_2m": dpmpp_2m, "dpmpp_2m_sde": dpmpp_2m_sde, "dpmpp_3m_sde": dpmpp_3m_sde,
    "dpm_fast": dpm_fast, "dpm_adaptive": dpm_adaptive, "restart": restart,
}


# --- A1111's timestep samplers (DDIM, PLMS): eps predictions at integer timesteps ---------------------
# `eps(x, t)` is the guided model's noise prediction at timestep t for x = sqrt(a_t) x0 + sqrt(1 - a_t) eps.
# As in A1111, the timesteps are 1, 1 + s, 1 + 2s, ... (s = 1000 // steps, clipped to 999), sampling
# runs from the last to the second (len - 1 model steps) and ends at the noise level of timestep 1.

def a1111_timesteps(steps: int, train_steps: int = 1000) -> torch.Tensor:
    return torch.clip(torch.arange(0, train_steps, train_steps // steps) + 1, 0, train_steps - 1)


def _ddim_levels(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor):
    a = alphas_cumprod[timesteps]
    a_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].double()
    return a, a_prev, torch.sqrt(1 - a)


def ddim(eps, x, timesteps, alphas_cumprod, noise: Noise, step: Step, eta: float = 0.0,
         uncond_eps: Callable[[], torch.Tensor] | None = None):
    """DDIM (Song et al. 2021); eta > 0 adds that fraction of the ancestral noise. With `uncond_eps`
    (DDIM CFG++, Chung et al. 2024) the step back towards noise uses the unconditional prediction of
    the call just made instead of the guided one."""
    a, a_prev, sqrt_one_minus_a = _ddim_levels(alphas_cumprod, timesteps)
    sigmas = eta * torch.sqrt((1 - a_prev) / (1 - a).double() * (1 - a.double() / a_prev))  # A1111's precisions
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = eps(x, timesteps[index])
        a_t, a_p, sigma_t = a[index].item(), a_prev[index].item(), sigmas[index].item()
        x0 = (x - sqrt_one_minus_a[index].item() * e_t) / a_t ** 0.5
        direction = e_t if uncond_eps is None else uncond_eps()
        x = a_p ** 0.5 * x0 + (1.0 - a_p - sigma_t ** 2) ** 0.5 * direction
        if sigma_t:
            x = x + sigma_t * noise(None, None)
        step(i, x, x0)
    return x


def plms(eps, x, timesteps, alphas_cumprod, noise: Noise, step: Step):
    """Pseudo linear multistep (Liu et al. 2022): a pseudo improved-Euler first step, then
    Adams-Bashforth combinations of up to four eps predictions, each applied as a DDIM step."""
    a, a_prev, sqrt_one_minus_a = _ddim_levels(alphas_cumprod, timesteps)

    def x0_of(x, e, index):
        return (x - sqrt_one_minus_a[index].item() * e) / a[index].item() ** 0.5

    def ddim_move(x, e, index):
        return a_prev[index].item() ** 0.5 * x0_of(x, e, index) + (1.0 - a_prev[index].item()) ** 0.5 * e

    history: list[torch.Tensor] = []
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = eps(x, timesteps[index])
        x0 = x0_of(x, e_t, index)
        if not history:
            x_next = ddim_move(x, e_t, index)
            e_next = eps(x_next, timesteps[max(index - 1, 0)])
            x0 = x0_of(x_next, e_next, max(index - 1, 0))
            e_mix = (e_t + e_next) / 2
        elif len(history) == 1:
            e_mix = (3 * e_t - history[-1]) / 2
        elif len(history) == 2:
            e_mix = (23 * e_t - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            e_mix = (55 * e_t - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        x = ddim_move(x, e_mix, index)
        history = (history + [e_t])[-3:]
        step(i, x, x0)
    return x


class VPTime:
    """A1111's UniPC noise schedule: continuous time t in (0, 1], where training timestep i sits at
    t = (i + 1) / N, log alpha_t = 0.5 log(alphas_cumprod) linear in t between those points (and beyond
    the first two), sigma_t = sqrt(1 - alpha_t^2), lambda_t = log(alpha_t / sigma_t). The U-Net is given
    the fractional timestep (t - 1/N) * 1000, as A1111 gives it."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.n = len(alphas_cumprod)
        self.grid = np.arange(1, self.n + 1, dtype=np.float64) / self.n
        # A1111 takes the log in the schedule's precision: a 16-bit schedule (use_downcasted_alpha_bar) has 16-bit
        # logs; in 32 bits the double's log is within rounding of it
        if alphas_cumprod.dtype == torch.float16:
            self.log_alphas = 0.5 * torch.log(alphas_cumprod).double().cpu().numpy()
        else:
            self.log_alphas = 0.5 * np.log(alphas_cumprod.double().cpu().numpy())

    def log_alpha(self, t: float) -> float:
        i = min(max(int(np.searchsorted(self.grid, t)), 1), self.n - 1)  # grid[i-1] < t <= grid[i]
        t0, t1 = self.grid[i - 1], self.grid[i]
        a0, a1 = self.log_alphas[i - 1], self.log_alphas[i]
        return float(a0 + (t - t0) * (a1 - a0) / (t1 - t0))

    def alpha(self, t: float) -> float:
        return math.exp(self.log_alpha(t))

    def sigma(self, t: float) -> float:
        return math.sqrt(-math.expm1(2 * self.log_alpha(t)))

    def lam(self, t: float) -> float:
        la = self.log_alpha(t)
        return la - 0.5 * math.log(-math.expm1(2 * la))

    def t_of_lambda(self, lam: float) -> float:
        """The inverse of `lam`: log alpha from lambda, then t by the same piecewise-linear map."""
        la = -0.5 * float(np.logaddexp(0.0, -2.0 * lam))
        xs, ts = self.log_alphas[::-1], self.grid[::-1]  # log alpha rises as t falls
        i = min(max(int(np.searchsorted(xs, la)), 1), self.n - 1)
        return float(ts[i - 1] + (la - xs[i - 1]) * (ts[i] - ts[i - 1]) / (xs[i] - xs[i - 1]))

    def model_time(self, t: float) -> float:
        return (t - 1 / self.n) * 1000


def unipc_times(schedule: VPTime, steps: int, t_start: float = 1.0, skip_type: str = "time_uniform") -> list[float]:
    """The steps + 1 times A1111's UniPC visits, from t_start down to 1/N: evenly spaced in t
    ("time_uniform", A1111's default), in sqrt(t) ("time_quadratic") or in lambda ("logSNR")."""
    t_end = 1 / schedule.n
    if skip_type == "time_uniform":
        return np.linspace(t_start, t_end, steps + 1).tolist()
    if skip_type == "time_quadratic":
        return (np.linspace(t_start ** 0.5, t_end ** 0.5, steps + 1) ** 2).tolist()
    if skip_type == "logSNR":
        lams = np.linspace(schedule.lam(t_start), schedule.lam(t_end), steps + 1)
        return [schedule.t_of_lambda(float(v)) for v in lams]
    raise ValueError(f"Unknown UniPC skip type {skip_type!r}; one of time_uniform, time_quadratic, logSNR")


def _unipc_update(x0_at, x: torch.Tensor, models: list[torch.Tensor], times: list[float], t: float, order: int,
                  corrector: bool, variant: str, schedule: VPTime) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One UniPC step (Zhao et al. 2023, data prediction, B(h) = h for bh1, e^h - 1 for bh2) from
    times[-1] to t with the last `order` x0 predictions: the UniP predictor, then, with `corrector`, the
    UniC corrector from the model's prediction at the predicted point, which the next step reuses."""
    t_prev, m0 = times[-1], models[-1]
    lam_prev = schedule.lam(t_prev)
    h = schedule.lam(t) - lam_prev
    alpha_t, sigma_t, sigma_prev = schedule.alpha(t), schedule.sigma(t), schedule.sigma(t_prev)
    rks, diffs = [], []
    for i in range(1, order):
        rk = (schedule.lam(times[-(i + 1)]) - lam_prev) / h
        rks.append(rk)
        diffs.append((models[-(i + 1)] - m0) / rk)
    rks.append(1.0)
    hh = -h  # the data-prediction form integrates in -lambda
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rows, b, factorial = [], [], 1
    for i in range(1, order + 1):
        rows.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b = np.array(rows), np.array(b)

    def combine(rhos, terms):
        return sum((float(r) * d for r, d in zip(rhos, terms)), torch.zeros_like(x))

    x_base = (sigma_t / sigma_prev) * x - (alpha_t * h_phi_1) * m0
    if diffs:
        rhos_p = [0.5] if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1])
        x_t = x_base - (alpha_t * b_h) * combine(rhos_p, diffs)
    else:
        x_t = x_base
    if not corrector:
        return x_t, None
    rhos_c = [0.5] if order == 1 else np.linalg.solve(R, b)
    model_t = x0_at(x_t, t)
    x_t = x_base - (alpha_t * b_h) * (combine(rhos_c[:-1], diffs) + float(rhos_c[-1]) * (model_t - m0))
    return x_t, model_t


def unipc(eps, x, timesteps, alphas_cumprod, noise: Noise, step: Step, order: int = 3, variant: str = "bh1",
          skip_type: str = "time_uniform", lower_order_final: bool = True, img2img: bool = False):
    """A1111's UniPC: multistep UniPC in data prediction over `len(timesteps)` steps of A1111's continuous
    time grid (`unipc_times`), from t = 1 (txt2img) or just above the last of `timesteps` (img2img, as
    A1111 computes it: timesteps[-1] / 1000 + 1 / 1000). The first steps warm up with orders 1, 2, ...;
    with `lower_order_final` the last steps drop to orders ..., 2, 1; every step but the last is
    corrected. Ends at t = 1/N, the noise level of timestep 0, as A1111 does (no final denoising)."""
    schedule = VPTime(alphas_cumprod)
    steps = len(timesteps)
    if steps == 0:  # img2img at a denoising strength too low for a single step
        return x
    t_start = float(timesteps[-1]) / 1000 + 1 / 1000 if img2img else 1.0

    def x0_at(x: torch.Tensor, t: float) -> torch.Tensor:
        e = eps(x, torch.tensor(schedule.model_time(t), dtype=torch.float64))
        return (x - schedule.sigma(t) * e) / schedule.alpha(t)

    return unipc_solve(x0_at, x, unipc_times(schedule, steps, t_start, skip_type), schedule, step, order, variant,
                       lower_order_final)


def unipc_solve(x0_at, x: torch.Tensor, times: list[float], schedule: VPTime, step: Step, order: int = 3,
                variant: str = "bh1", lower_order_final: bool = True) -> torch.Tensor:
    """Multistep UniPC over `times` with `x0_at(x, t)` the data prediction at time t."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"Unknown UniPC variant {variant!r}; one of bh1, bh2")
    steps = len(times) - 1
    order = max(1, min(order, steps))  # A1111 asserts steps >= order; fewer steps simply use a lower order
    models, seen = [x0_at(x, times[0])], [times[0]]
    for i in range(1, steps + 1):
        step_order = i if i < order else min(order, steps + 1 - i) if lower_order_final else order
        x, model_x = _unipc_update(x0_at, x, models, seen, times[i], step_order, i < steps, variant, schedule)
        if i < steps:
            models, seen = (models + [model_x])[-order:], (seen + [times[i]])[-order:]
        step(i - 1, x, models[-1])  # the x0 of the latest model call
    return x


TIMESTEP_FUNCTIONS = {"ddim": ddim, "plms": plms, "unipc": unipc}


def lcm(denoise: Denoise, x, sigmas, noise: Noise, step: Step):
    """Latent Consistency Model sampling: each step jumps to the model's x0 and, unless it is the last,
    re-noises that to the next level. `denoise` must be the LCM-scaled model (see lcm_x0)."""
    for i in range(len(sigmas) - 1):
        x = x0 = denoise(x, sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise(sigmas[i], sigmas[i + 1])
        step(i, x, x0)
    return x


SAMPLE_FUNCTIONS["lcm"] = lcm

# LCM models are distilled on 50 of the 1000 training timesteps: 19, 39, ..., 999.
LCM_ORIGINAL_STEPS = 50


def lcm_grid(model_sigmas: torch.Tensor) -> torch.Tensor:
    skip = len(model_sigmas) // LCM_ORIGINAL_STEPS
    return model_sigmas[skip - 1::skip]


def lcm_timestep(sigma: torch.Tensor, grid_log_sigmas: torch.Tensor, train_steps: int = 1000) -> torch.Tensor:
    """The grid timestep nearest to sigma in log sigma (A1111 snaps LCM's model time to the grid)."""
    skip = train_steps // len(grid_log_sigmas)
    return (sigma.log() - grid_log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape) * skip + (skip - 1)


def lcm_x0(x: torch.Tensor, sigma: torch.Tensor, eps: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """The consistency model's boundary-condition output: x0 from eps, blended with the input by the
    LCM scalings of timestep * 10 (sigma_data 0.5)."""
    x0 = x + eps * -sigma
    scaled = timestep * 10.0
    c_skip = 0.5 ** 2 / (scaled ** 2 + 0.5 ** 2)
    c_out = scaled / (scaled ** 2 + 0.5 ** 2) ** 0.5
    return c_out * x0 + c_skip * x
