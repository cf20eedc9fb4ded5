"""Train the built-in demo model: a tiny Stable Diffusion 1.x for the shapes world (tools/shapes_world.py).

Same architecture as SD 1.x, only narrower: diffusers AutoencoderKL (4 levels, latents H/8 x W/8 x 4),
UNet2DConditionModel with cross-attention, a transformers CLIPTextModel on the real CLIP tokenizer
(configs/tokenizer, 49408 tokens), epsilon prediction on SD's scaled-linear schedule. Written in the
original LDM single-file layout with its YAML beside it, so the app loads it like any SD 1.5 file.

Stages (each checkpoints to the work dir; run the same command again to continue where it stopped):
  1. vae    - the autoencoder on rendered scenes (random crops, then whole images);
  2. cache  - encode a fixed pool of scenes to latents with the frozen VAE (posterior mean and std);
  3. unet   - U-Net and text encoder together on those latents (a fresh caption each time, 10% empty
              so classifier-free guidance works), min-SNR weighted, AdamW with warm-up, EMA;
  4. export - EMA weights -> models/builtin/shapes-tiny.safetensors (+ .yaml).

CPU only and seeded. Usage:
    python tools/train_tiny_model.py --work /tmp/shapes-train            # everything
    python tools/train_tiny_model.py --work /tmp/quick --vae-steps 50 --unet-steps 50 --cache 256  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from modules.models.prompt_encoder import OPENAI_CLIP, PromptEncoder  # noqa: E402
from modules.models import ldm_export  # noqa: E402
from modules.paths import TOKENIZER_DIR  # noqa: E402
from tools import shapes_world as world  # noqa: E402

DEFAULT_OUT = ROOT / "models" / "builtin" / "shapes-tiny.safetensors"


# --- architecture ---------------------------------------------------------------------------------
# The loader builds every GroupNorm with SD's 32 groups. With only 32 channels a group is one channel, and
# normalising a channel over the image removes its mean: a network whose last norm (VAE decoder output,
# U-Net output) has 32 channels cannot say "this whole flat area is blue" except through side effects
# such as border artefacts. So the full-resolution levels have 64 channels (2 per group).
def build_vae(a) -> AutoencoderKL:
    ch = tuple(a.vae_channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                         block_out_channels=ch, down_block_types=("DownEncoderBlock2D",) * len(ch),
                         up_block_types=("UpDecoderBlock2D",) * len(ch), norm_num_groups=32,
                         sample_size=world.SIZE, scaling_factor=1.0)


def build_unet(a) -> UNet2DConditionModel:
    ch = tuple(a.unet_channels)
    attn = [i in a.unet_attn for i in range(len(ch))]
    return UNet2DConditionModel(
        sample_size=world.SIZE // 8, in_channels=4, out_channels=4, layers_per_block=a.unet_layers,
        block_out_channels=ch,
        down_block_types=tuple("CrossAttnDownBlock2D" if x else "DownBlock2D" for x in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if x else "UpBlock2D" for x in reversed(attn)),
        cross_attention_dim=a.text_width, attention_head_dim=a.unet_heads,
    )


def build_text_encoder(a) -> CLIPTextModel:
    # the loader gives the model hidden/64 heads (CLIP's head width), so the width is a multiple of 64
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=a.text_width, intermediate_size=2 * a.text_width,
                         num_hidden_layers=a.text_layers, num_attention_heads=max(1, a.text_width // 64),
                         max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=a.text_width,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    model = CLIPTextModel(cfg)
    # A1111's emphasis rescales the encoder output so that its mean stays what it was; CLIP's output has a
    # clear non-zero mean, but a fresh final LayerNorm (bias 0) gives a mean of ~0 and the rescale divides
    # by ~0 (NaN at the first weighted caption). Start the bias at an offset instead: a constant added to
    # every token changes nothing in cross-attention (same shift for every key), only that mean.
    with torch.no_grad():
        getattr(model, "text_model", model).final_layer_norm.bias.fill_(a.text_output_offset)
    return model


# --- data -----------------------------------------------------------------------------------------
def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def vae_batch(rng: random.Random, size: int, count: int) -> torch.Tensor:
    """`count` scenes of any combination (the autoencoder knows nothing of captions), each randomly cropped
    to `size` (a multiple of 8) unless that is the whole image."""
    out = []
    for _ in range(count):
        img = world.render(world.random_scene(rng, world.ALL_TRIPLES))
        if size < world.SIZE:
            x, y = rng.randrange(0, world.SIZE - size + 1, 8), rng.randrange(0, world.SIZE - size + 1, 8)
            img = img[y:y + size, x:x + size]
        out.append(img)
    return to_tensor(out)


def vae_crop_schedule(step: int, total: int, batch: int) -> tuple[int, int]:
    """(crop size, count) with the same pixels per step. Small crops first: they learn fastest (many
    small latents, lots of borders); whole images for the last 20% so the model fits the real thing."""
    f = step / total
    if f < 0.6:
        return 32, batch * 16
    if f < 0.8:
        return 64, batch * 4
    return world.SIZE, batch


class Captions:
    """Token ids and emphasis weights of captions, read exactly as the app reads a prompt."""

    def __init__(self):
        tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)
        self.encoder = PromptEncoder(tok, None, OPENAI_CLIP)  # only its tokenisation and emphasis parsing

    @lru_cache(maxsize=None)  # noqa: B019 (one instance for the whole run)
    def row(self, text: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
        chunks = self.encoder.chunks(text)
        assert len(chunks) == 1, text
        weights = [1.0] + chunks[0].weights
        return tuple(self.encoder.chunk_ids(text)[0]), tuple(weights + [1.0] * (77 - len(weights)))

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.row(t) for t in texts]
        return torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])


def encode_captions(te: CLIPTextModel, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The text encoder's output with emphasis applied as the app's "Original" mode does for one prompt:
    each token's vector times its weight, then the whole rescaled to the unweighted mean."""
    z = te(ids).last_hidden_state
    weighted = z * weights[..., None]
    ratio = z.mean(dim=(1, 2), keepdim=True) / weighted.mean(dim=(1, 2), keepdim=True)
    return torch.where((weights != 1).any(dim=1)[:, None, None], weighted * ratio, z)


# --- state ----------------------------------------------------------------------------------------
def save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def set_lr(opt, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


class Timer:
    """Wall time and this process's CPU time spent in each stage, kept across resumes."""

    def __init__(self, work: Path):
        self.path = work / "times.json"
        self.times = json.loads(self.path.read_text()) if self.path.exists() else {}
        self._cpu = time.process_time()

    def add(self, stage: str, seconds: float) -> None:
        cpu, self._cpu = time.process_time() - self._cpu, time.process_time()
        self.times[stage] = self.times.get(stage, 0.0) + seconds
        self.times[stage + "_cpu"] = self.times.get(stage + "_cpu", 0.0) + cpu
        self.path.write_text(json.dumps(self.times, indent=1))


# --- stage 1: VAE ---------------------------------------------------------------------------------
def train_vae(a, work: Path, timer: Timer) -> AutoencoderKL:
    final = work / "vae.pt"
    vae = build_vae(a)
    if final.exists():
        vae.load_state_dict(torch.load(final, weights_only=True)["vae"])
        return vae.eval()
    torch.manual_seed(a.seed)
    vae = build_vae(a)
    opt = torch.optim.AdamW(vae.parameters(), lr=a.vae_lr, weight_decay=0.0, betas=(0.9, 0.99))
    ckpt, step, losses = work / "vae-state.pt", 0, []
    if ckpt.exists():
        s = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(s["vae"])
        opt.load_state_dict(s["opt"])
        step, losses = s["step"], s["losses"]
    vae.train()
    last_save, started = time.time(), time.time()
    bar = tqdm(total=a.vae_steps, initial=step, desc="vae", dynamic_ncols=True)
    while step < a.vae_steps:
        rng = random.Random(f"{a.seed}-vae-{step}")
        size, count = vae_crop_schedule(step, a.vae_steps, a.vae_batch)
        x = vae_batch(rng, size, count)
        set_lr(opt, lr_at(step, a.vae_steps, a.vae_lr, a.vae_warmup))
        gen = torch.Generator().manual_seed(a.seed * 1_000_003 + step)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        y = vae.decode(z).sample
        rec = F.mse_loss(y, x) + 0.5 * (y - x).abs().mean()
        kl = 0.5 * (post.mean.square() + post.var - 1 - post.logvar).mean()
        loss = rec + a.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append((rec.item(), kl.item()))
        step += 1
        bar.update(1)
        recent = np.mean([r for r, _ in losses[-50:]])
        bar.set_postfix(rec=f"{recent:.4f}", kl=f"{kl.item():.2f}", crop=size)
        if time.time() - last_save > a.save_every or step == a.vae_steps:
            save_atomic({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step, "losses": losses}, ckpt)
            timer.add("vae", time.time() - started)
            started = last_save = time.time()
    bar.close()
    vae.eval()
    final_rec = float(np.mean([r for r, _ in losses[-100:]]))
    final_kl = float(np.mean([k for _, k in losses[-100:]]))
    save_atomic({"vae": vae.state_dict(), "final_rec": final_rec, "final_kl": final_kl}, final)
    return vae


# --- stage 2: latent cache ------------------------------------------------------------------------
@torch.no_grad()
def cache_latents(a, work: Path, vae: AutoencoderKL, timer: Timer) -> dict:
    path = work / "latents.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    part = work / "latents-part.pt"
    done = torch.load(part, weights_only=False) if part.exists() else {"mean": [], "std": [], "scenes": []}
    rng = random.Random(f"{a.seed}-cache")
    # training combinations only; some shapes near the middle, where a shape word pays off most clearly
    # (with the position known, "square" vs "circle" fixes the corners), the rest anywhere
    scenes = [world.random_scene(rng, spread=a.centred_spread if rng.random() < a.centred else 1.0)
              for _ in range(a.cache)]
    started, last_save = time.time(), time.time()
    bar = tqdm(total=a.cache, initial=len(done["scenes"]), desc="cache", dynamic_ncols=True)
    while len(done["scenes"]) < a.cache:
        i = len(done["scenes"])
        chunk = scenes[i:i + 32]
        post = vae.encode(to_tensor([world.render(s) for s in chunk])).latent_dist
        done["mean"].append(post.mean.half())
        done["std"].append(post.std.half())
        done["scenes"].extend(chunk)
        bar.update(len(chunk))
        if time.time() - last_save > a.save_every:
            save_atomic(done, part)
            timer.add("cache", time.time() - started)
            started = last_save = time.time()
    bar.close()
    mean, std = torch.cat(done["mean"]).float(), torch.cat(done["std"]).float()
    # SD scales latents to unit variance with a constant in the config (0.18215 for SD's VAE); ours:
    scale = float(1.0 / mean.std())
    out = {"mean": mean, "std": std, "scenes": [(s.colour, s.shape, s.background, s.cx, s.cy, s.side)
                                                 for s in done["scenes"]], "scale": scale}
    save_atomic(out, path)
    timer.add("cache", time.time() - started)
    part.unlink(missing_ok=True)
    return out


# --- stage 3: U-Net + text encoder ----------------------------------------------------------------
def sd_alphas_cumprod() -> torch.Tensor:
    return ldm_export.schedule_buffers()["alphas_cumprod"].double()


def ema_update(ema: dict[str, torch.Tensor], model_params: dict[str, torch.Tensor], decay: float) -> None:
    with torch.no_grad():
        for k, p in model_params.items():
            ema[k].mul_(decay).add_(p.detach(), alpha=1 - decay)


@dataclass(frozen=True)
class Phase:
    """One stretch of U-Net + text encoder training with its own schedule and loss weighting."""
    name: str  # its files in the work dir: NAME-state.pt (resumable), NAME.pt (final EMA weights)
    steps: int
    lr: float
    warmup: int
    snr_floor: float
    t_sampling_alpha: float
    seed_offset: int
    object_weight: float  # extra loss weight on the latent pixels under the shape's bounding box
    shape_weight: float = 0.0  # extra loss weight where circle, square and triangle of that box differ
    t_range: tuple[int, int] = (0, 1000)  # timesteps drawn from this range only


def phases(a) -> list[Phase]:
    return [Phase("unet", a.unet_steps, a.unet_lr, a.unet_warmup, a.snr_floor, a.t_sampling_alpha, 500_000,
                  a.object_weight, a.shape_weight, tuple(a.t_range)),
            Phase("refine", a.refine_steps, a.refine_lr, a.refine_warmup, a.refine_snr_floor, 0.0, 700_000,
                  a.refine_object_weight, a.refine_shape_weight, tuple(a.refine_t_range))]


def object_masks(scenes: list[world.Scene], size: int = world.SIZE // 8) -> torch.Tensor:
    """(N, 1, size, size): 1 on the latent pixels that the shape's bounding box (grown by 4 px) touches.
    What tells a circle from a square or a triangle is a few latent pixels there; weighting them up
    makes the shape words worth learning (colours dominate the plain loss)."""
    k = world.SIZE / size
    out = torch.zeros(len(scenes), 1, size, size)
    for n, s in enumerate(scenes):
        lo = [max(0, int((c - s.side / 2 - 4) // k)) for c in (s.cy, s.cx)]
        hi = [min(size, int(math.ceil((c + s.side / 2 + 4) / k))) for c in (s.cy, s.cx)]
        out[n, 0, lo[0]:hi[0], lo[1]:hi[1]] = 1
    return out


def shape_masks(scenes: list[world.Scene], size: int = world.SIZE // 8) -> torch.Tensor:
    """(N, 1, size, size): for each latent pixel, the fraction of its image pixels where a circle, a square
    and a triangle with the scene's bounding box do not all agree (the corners, the triangle's flanks). Only there
    does the shape word change the picture; weighting those pixels up is what makes the word worth learning, since
    they are a few percent of the image and the plain loss is dominated by the colours."""
    k = world.SIZE // size
    out = torch.zeros(len(scenes), 1, size, size)
    for n, s in enumerate(scenes):
        masks = [world.render(world.Scene("white", shape, "black", s.cx, s.cy, s.side), supersample=1)[:, :, 0] > 127
                 for shape in world.SHAPES]
        differ = np.logical_or.reduce(masks) & ~np.logical_and.reduce(masks)
        pooled = differ.reshape(size, k, size, k).mean(axis=(1, 3))
        out[n, 0] = torch.from_numpy(pooled.astype(np.float32))
    return out


def train_unet(a, work: Path, cache: dict, timer: Timer, phase: Phase,
               start: tuple[UNet2DConditionModel, CLIPTextModel] | None) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Train `phase`, from fresh weights or from `start` (the previous phase's EMA weights)."""
    final = work / f"{phase.name}.pt"
    unet, te = build_unet(a), build_text_encoder(a)
    if final.exists():
        s = torch.load(final, weights_only=False)
        unet.load_state_dict(s["unet"])
        te.load_state_dict(s["te"])
        return unet.eval(), te.eval()
    torch.manual_seed(a.seed + 1)
    unet, te = build_unet(a), build_text_encoder(a)
    if start is not None:
        unet.load_state_dict(start[0].state_dict())
        te.load_state_dict(start[1].state_dict())
    params = {**{"unet." + k: p for k, p in unet.named_parameters()},
              **{"te." + k: p for k, p in te.named_parameters()}}
    groups = {}
    for k, p in params.items():
        no_wd = p.dim() < 2 or "embedding" in k or "norm" in k
        text_side = k.startswith("te.") or ".attn2." in k  # the text encoder and the U-Net's cross-attention
        groups.setdefault((no_wd, text_side), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": 0.0 if no_wd else 0.01,
                              "lr_scale": a.text_lr_scale if text_side else 1.0}
                             for (no_wd, text_side), ps in sorted(groups.items())], lr=phase.lr, betas=(0.9, 0.99))
    ema = {k: p.detach().clone() for k, p in params.items()}
    ckpt, step, losses = work / f"{phase.name}-state.pt", 0, []
    if ckpt.exists():
        s = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(s["unet"])
        te.load_state_dict(s["te"])
        opt.load_state_dict(s["opt"])
        ema, step, losses = s["ema"], s["step"], s["losses"]
    captions = Captions()
    acp = sd_alphas_cumprod()
    snr = acp / (1 - acp)
    # Per-timestep loss weight on the epsilon error: in x0 terms clamp(SNR, floor, gamma), i.e. min-SNR-gamma
    # for the low-noise steps and, with floor 1, the v-prediction weighting for the high-noise steps that
    # decide colours and shapes (there the epsilon error alone carries almost no signal). Mean 1.
    weight_by_t = torch.clamp(snr, min=phase.snr_floor, max=a.min_snr_gamma) / snr
    # Timesteps are drawn with probability ~ weight**alpha and the loss reweighted by the rest, so the
    # compute goes where the weight is (alpha 1: every sample counts the same) without changing the objective.
    t_prob = weight_by_t ** phase.t_sampling_alpha
    t_prob[:phase.t_range[0]] = 0
    t_prob[phase.t_range[1]:] = 0
    t_prob = (t_prob / t_prob.sum()).float()
    weight_by_t = torch.where(t_prob > 0, weight_by_t / (t_prob * len(t_prob)).clamp_min(1e-30), 0).float()
    weight_by_t = weight_by_t / (weight_by_t * t_prob).sum()  # mean 1 under the sampling
    sqrt_a, sqrt_1ma = acp.sqrt().float(), (1 - acp).sqrt().float()
    mean, std, scale = cache["mean"], cache["std"], cache["scale"]
    scenes = [world.Scene(*s) for s in cache["scenes"]]
    pixel_weight = 1 + phase.object_weight * object_masks(scenes)
    if phase.shape_weight:
        pixel_weight = pixel_weight + phase.shape_weight * shape_masks(scenes)
    unet.train()
    te.train()
    last_save, started = time.time(), time.time()
    bar = tqdm(total=phase.steps, initial=step, desc=phase.name, dynamic_ncols=True)
    while step < phase.steps:
        rng = random.Random(f"{a.seed}-{phase.name}-{step}")
        gen = torch.Generator().manual_seed(a.seed * 1_000_003 + phase.seed_offset + step)
        idx = torch.randint(0, len(scenes), (a.batch,), generator=gen)
        texts = ["" if rng.random() < a.empty_captions else
                 world.caption(scenes[i], rng, a.caption_noise, a.caption_emphasis) for i in idx.tolist()]
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale
        noise = torch.randn(x0.shape, generator=gen)
        if a.offset_noise:
            noise = noise + a.offset_noise * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=gen)
        t = torch.multinomial(t_prob, a.batch, replacement=True, generator=gen)
        xt = sqrt_a[t, None, None, None] * x0 + sqrt_1ma[t, None, None, None] * noise
        set_lr(opt, lr_at(step, phase.steps, phase.lr, phase.warmup))
        context = encode_captions(te, *captions.batch(texts))
        pred = unet(xt, t, encoder_hidden_states=context).sample
        per_sample = ((pred - noise).square() * pixel_weight[idx]).mean(dim=(1, 2, 3))
        loss = (per_sample * weight_by_t[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        d = min(a.ema, (1 + step) / (10 + step))
        ema_update(ema, params, d)
        losses.append((loss.item(), per_sample.mean().item()))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean([loss for loss, _ in losses[-100:]]):.4f}",
                        mse=f"{np.mean([m for _, m in losses[-100:]]):.4f}")
        if time.time() - last_save > a.save_every or step == phase.steps:
            save_atomic({"unet": unet.state_dict(), "te": te.state_dict(), "opt": opt.state_dict(), "ema": ema,
                         "step": step, "losses": losses}, ckpt)
            timer.add(phase.name, time.time() - started)
            started = last_save = time.time()
    bar.close()
    # the EMA weights are the model
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(ema[k])
    final_loss = float(np.mean([loss for loss, _ in losses[-200:]]))
    final_mse = float(np.mean([m for _, m in losses[-200:]]))
    save_atomic({"unet": unet.state_dict(), "te": te.state_dict(), "final_loss": final_loss,
                 "final_mse": final_mse}, final)
    return unet.eval(), te.eval()


# --- stage 4: export ------------------------------------------------------------------------------
def export(a, unet, vae, te, scale: float, out: Path) -> Path:
    vae.register_to_config(scaling_factor=round(scale, 5))
    out.parent.mkdir(parents=True, exist_ok=True)
    sd = ldm_export.checkpoint_state_dict(unet, vae, te, "sd1")
    meta = {"modelspec.title": "shapes-tiny", "modelspec.architecture": "stable-diffusion-v1",
            "modelspec.description": "Tiny SD 1.x-architecture model trained on coloured shapes (see MODEL_CARD.md)"}
    ldm_export.save(out, sd, dtype=torch.float16 if a.fp16 else None, metadata=meta)
    ldm_export.write_yaml(out.with_suffix(".yaml"), ldm_export.ldm_yaml(unet, vae, "sd1", "epsilon"))
    return out


def load_init(a) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel, float]:
    """The components of an exported checkpoint (--init-from), read by the app's own loader, copied into
    modules built from this run's settings (so e.g. the number of attention heads may differ: the weights
    do not depend on it). Returns (vae, unet, text encoder, latent scale)."""
    from modules.models import checkpoint_file, families, loader
    from modules.paths import from_args

    path = a.init_from
    sd = checkpoint_file.read_state_dict(path)
    config = families.detect(path, sd, checkpoint_file.read_metadata(path), from_args(str(a.work)).default_sd1_config)
    built = loader.build(path, sd, config)
    vae, unet, te = build_vae(a), build_unet(a), build_text_encoder(a)
    for mine, theirs in ((vae, built.vae), (unet, built.unet), (te, built.text_encoder)):
        mine.load_state_dict({k: v.float() for k, v in theirs.state_dict().items()})
    return vae.eval(), unet, te, config.scale_factor


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/shapes-train"), help="checkpoints and caches (resumable)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--init-from", type=Path, default=None,
                   help="an exported checkpoint to continue from: its VAE is kept (no VAE stage), its U-Net and "
                        "text encoder start the first U-Net phase")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-every", type=float, default=120.0, help="seconds between checkpoints")
    # architecture
    p.add_argument("--vae-channels", type=int, nargs="+", default=[64, 64, 64, 64])
    p.add_argument("--unet-channels", type=int, nargs="+", default=[64, 64, 128])
    p.add_argument("--unet-attn", type=int, nargs="+", default=[1, 2],
                   help="levels (0 = full latent resolution) with cross-attention; the middle block always has it")
    p.add_argument("--unet-layers", type=int, default=1)
    p.add_argument("--unet-heads", type=int, default=8)
    p.add_argument("--text-width", type=int, default=128)
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--text-output-offset", type=float, default=0.5,
                   help="initial bias of the text encoder's final LayerNorm (see build_text_encoder)")
    # VAE
    p.add_argument("--vae-steps", type=int, default=1000)
    p.add_argument("--vae-batch", type=int, default=2,
                   help="whole images per step (as pixels: x4 64x64 crops, x16 32x32 crops)")
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-warmup", type=int, default=50)
    p.add_argument("--kl-weight", type=float, default=1e-4)
    # latents
    p.add_argument("--cache", type=int, default=6144, help="scenes encoded once for U-Net training")
    p.add_argument("--centred", type=float, default=0.5, help="fraction of cached scenes near the middle")
    p.add_argument("--centred-spread", type=float, default=0.2)
    # U-Net + text encoder
    p.add_argument("--unet-steps", type=int, default=7000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--unet-lr", type=float, default=8e-4)
    p.add_argument("--unet-warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--min-snr-gamma", type=float, default=5.0)
    p.add_argument("--snr-floor", type=float, default=1.0)
    p.add_argument("--t-sampling-alpha", type=float, default=0.5)
    p.add_argument("--text-lr-scale", type=float, default=3.0,
                   help="learning-rate factor for the text encoder and cross-attention")
    p.add_argument("--refine-steps", type=int, default=0,
                   help="then this many steps with plain min-SNR weighting and uniform timesteps (shapes)")
    p.add_argument("--object-weight", type=float, default=0.0)
    p.add_argument("--refine-object-weight", type=float, default=4.0)
    p.add_argument("--shape-weight", type=float, default=8.0)
    p.add_argument("--refine-shape-weight", type=float, default=0.0)
    p.add_argument("--t-range", type=int, nargs=2, default=[0, 1000])
    p.add_argument("--refine-t-range", type=int, nargs=2, default=[0, 1000])
    p.add_argument("--refine-lr", type=float, default=5e-4)
    p.add_argument("--refine-warmup", type=int, default=50)
    p.add_argument("--refine-snr-floor", type=float, default=0.0)
    p.add_argument("--empty-captions", type=float, default=0.1)
    p.add_argument("--caption-noise", type=float, default=0.1,
                   help="chance that a caption word is a random draw (noisy captions, see shapes_world.caption)")
    p.add_argument("--caption-emphasis", type=float, default=0.5,
                   help="chance that a caption carries an emphasis weight on one word")
    p.add_argument("--offset-noise", type=float, default=0.0)
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True, help="store weights as fp16")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    a.work.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    saved = a.work / "settings.json"
    if saved.exists():
        old = json.loads(saved.read_text())
        changed = {k for k in settings if k not in ("threads", "save_every", "out") and old.get(k) != settings[k]}
        if changed:
            print(f"note: settings differ from the run in {a.work}: {sorted(changed)}", file=sys.stderr)
    saved.write_text(json.dumps(settings, indent=1))
    timer = Timer(a.work)

    if a.init_from:
        vae, unet0, te0, scale = load_init(a)
        model = (unet0, te0)
    else:
        vae, model, scale = train_vae(a, a.work, timer), None, None
    vae.requires_grad_(False)
    cache = cache_latents(a, a.work, vae, timer)
    if scale is not None:  # keep the checkpoint's latent scale: its U-Net was trained with it
        cache["scale"] = scale
    for phase in phases(a):
        if phase.steps:
            model = train_unet(a, a.work, cache, timer, phase, model)
    unet, te = model
    out = export(a, unet, vae, te, cache["scale"], a.out)
    vae_file = a.work / "vae.pt"
    vae_final = torch.load(vae_file, weights_only=False) if vae_file.exists() else {"final_rec": None, "final_kl": None}
    unet_final = torch.load(a.work / f"{[p for p in phases(a) if p.steps][-1].name}.pt", weights_only=False)
    summary = {
        "times_s": timer.times, "total_wall_s": sum(v for k, v in timer.times.items() if not k.endswith("_cpu")),
        "total_cpu_s": sum(v for k, v in timer.times.items() if k.endswith("_cpu")),
        "vae_final_reconstruction_loss": vae_final["final_rec"], "vae_final_kl": vae_final["final_kl"],
        "unet_final_loss_min_snr": unet_final["final_loss"], "unet_final_mse": unet_final["final_mse"],
        "latent_scale": cache["scale"], "init_from": str(a.init_from) if a.init_from else None, "file": str(out),
        "file_mb": out.stat().st_size / 2**20,
        "params_m": {"unet": sum(p.numel() for p in unet.parameters()) / 1e6,
                     "vae": sum(p.numel() for p in vae.parameters()) / 1e6,
                     "text_encoder": sum(p.numel() for p in te.parameters()) / 1e6},
    }
    (a.work / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
