"""The SDXL family on a tiny SDXL-architecture checkpoint (real LDM key layout): detection, the conditioning
against transformers' models on the file's own weights, the U-Net's extra inputs, a comparison with diffusers'
own SDXL pipeline, and jobs through the engine."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from modules import paths
from modules.generation import pipeline, rng, samplers
from modules.generation.params import GenerationParams, Img2ImgParams
from modules.models import checkpoint_file, families, loader, optimizations
from modules.models.checkpoint_file import CheckpointError
from modules.models.families import SD1, SDXL, sdxl
from modules.models.family import ConfigFiles, FamilyMatch, ModelConfig, read_yaml
from modules.models.prompt_encoder import BOS, EOS
from tests.support import tiny_models
from tests.support.engine import LONG_PROMPT, detect, encoded_positions, make_engine, make_manager
from tests.support.img2img import init_image, left_half_mask

CLIP_L_W, BIGG_W = tiny_models.TEXT_WIDTH["sdxl"], tiny_models.SDXL_BIGG_WIDTH


@pytest.fixture(scope="module")
def tiny():
    return tiny_models.build("sdxl", seed=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("sdxl")
    tiny.write(d / "models" / "Stable-diffusion" / "sdxl.safetensors")
    inpainting = tiny_models.build("sdxl", inpainting=True, seed=4)
    inpainting.write(d / "models" / "Stable-diffusion" / "sdxl-inpaint.safetensors")
    return d


@pytest.fixture(scope="module")
def model(data):
    manager = make_manager(data)
    return manager.get(manager.checkpoints.find("sdxl.safetensors"))


# --- detection -------------------------------------------------------------------------------------

def test_detection_base_inpainting_and_yaml_beside(tmp_path, tiny):
    config = detect(tiny.write(tmp_path / "base.safetensors", yaml_beside=False))
    assert (config.family, config.yaml_path.name, config.source) == (SDXL, "sd_xl_base.yaml", "detected")
    assert (config.label, config.default_size, config.scale_factor) == ("SDXL", (1024, 1024), 0.13025)
    assert config.unet_params["context_dim"] == 2048 and config.unet_params["adm_in_channels"] == 2816
    inpaint = tiny_models.build("sdxl", inpainting=True)
    config = detect(inpaint.write(tmp_path / "inpaint.safetensors", yaml_beside=False))
    assert (config.family, config.yaml_path.name, config.label) == (SDXL, "sd_xl_inpaint.yaml", "SDXL inpainting")
    # a YAML beside the file wins: the tiny one's (its own widths), and an SD 1.x one would make it SD 1.x
    config = detect(tiny.write(tmp_path / "beside.safetensors"))
    assert (config.family, config.source, config.unet_params["context_dim"]) == (SDXL, "beside", CLIP_L_W + BIGG_W)
    (tmp_path / "base.yaml").write_text((paths.CONFIGS / "v1-inference.yaml").read_text())
    assert detect(tmp_path / "base.safetensors").family is SD1


def test_family_and_size_from_the_header_alone(tmp_path, tiny):
    """The page and the API need a checkpoint's default size before it is loaded: read from the header."""
    base = tiny.write(tmp_path / "base.safetensors", yaml_beside=False)
    config = families.detect_from_header(base, paths.CONFIGS / "v1-inference.yaml")
    assert (config.family, config.default_size) == (SDXL, (1024, 1024))
    sd1 = tiny_models.build("sd1").write(tmp_path / "one.safetensors", yaml_beside=False)
    assert families.detect_from_header(sd1, paths.CONFIGS / "v1-inference.yaml").default_size == (512, 512)
    assert families.detect_from_header(tmp_path / "one.ckpt", paths.CONFIGS / "v1-inference.yaml") is None
    manager = make_manager(tmp_path)  # not loaded: from the header; a broken file: 512
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    base.rename(tmp_path / "models" / "Stable-diffusion" / "base.safetensors")
    (tmp_path / "models" / "Stable-diffusion" / "broken.safetensors").write_bytes(b"\x10\x00")
    manager.checkpoints.refresh()
    assert manager.default_size(manager.checkpoints.find("base.safetensors")) == (1024, 1024)
    assert manager.default_size(manager.checkpoints.find("broken.safetensors")) == (512, 512)


def test_a_turbo_name_or_the_model_spec_resolution_sets_the_size(tmp_path, tiny):
    """SDXL Turbo was distilled at 512x512: its default size is 512 (by its name, which the file does not otherwise
    tell apart); a file whose model-spec metadata gives a resolution gets that one."""
    def size(path):
        return families.detect_from_header(path, paths.CONFIGS / "v1-inference.yaml").default_size
    assert size(tiny.write(tmp_path / "sd_xl_turbo_1.0_fp16.safetensors", yaml_beside=False)) == (512, 512)
    spec = tiny.write(tmp_path / "spec.safetensors", yaml_beside=False, metadata={"modelspec.resolution": "896x1152"})
    assert size(spec) == (896, 1152)
    assert size(tiny.write(tmp_path / "plain.safetensors", yaml_beside=False)) == (1024, 1024)


def test_a_base_unet_under_refiner_keys_fails_to_load_naming_the_config(tmp_path, tiny):
    """bigG alone as the first embedder is read as a refiner (A1111's test); a file that is not really one fails
    to build against the refiner's config, with a message naming it (the refiner's own tests: test_sdxl_refiner)."""
    sd = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v for k, v in tiny.state_dict().items()
          if not k.startswith("conditioner.embedders.0.")}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "refiner.safetensors"))
    path = tmp_path / "refiner.safetensors"
    config = detect(path)
    assert config.yaml_path.name == "sd_xl_refiner.yaml"
    with pytest.raises(CheckpointError, match="sd_xl_refiner.yaml"):
        loader.build(path, checkpoint_file.read_state_dict(path), config)


# --- conditioning against transformers' models on the file's weights -----------------------------------

def _rows(model, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLIP-L row, bigG row) for a one-chunk text: BOS, tokens, EOS, then EOS (CLIP-L) or 0 (bigG) padding."""
    ids = [BOS] + model.text.tokenize(text) + [EOS]
    return torch.tensor([ids + [EOS] * (77 - len(ids))]), torch.tensor([ids + [0] * (77 - len(ids))])


@torch.no_grad()
def _reference(model, tiny, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The context and pooled vector computed here from the tiny model's own modules and the file's
    OpenCLIP projection matrix (used as OpenCLIP does, x @ P)."""
    row_l, row_g = _rows(model, text)
    hidden_l = tiny.text_encoder(row_l, output_hidden_states=True).hidden_states
    out_g = tiny.text_encoder_2(row_g, output_hidden_states=True)
    assert len(hidden_l) == 4  # embeddings + 3 layers: layer_idx 2 is the penultimate, as 11 of 12 in SDXL
    context = torch.cat([hidden_l[2][0], out_g.hidden_states[-2][0]], dim=-1)
    projection = load_file(str(model.info.filename))["conditioner.embedders.1.model.text_projection"].float()
    end = int(row_g[0].argmax())
    final = tiny.text_encoder_2.text_model.final_layer_norm(out_g.hidden_states[-1][0, end])
    return context, final @ projection


def test_context_and_pooled_equal_an_independent_computation(model, tiny):
    cond = model.text.encode_prompt("a red circle", 4).parts[0][0].at(0)
    context, pooled = _reference(model, tiny, "a red circle")
    assert cond.context.shape == (77, CLIP_L_W + BIGG_W) and cond.pooled.shape == (BIGG_W,)
    torch.testing.assert_close(cond.context, context, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cond.pooled, pooled, rtol=1e-5, atol=1e-5)


def test_chunks_emphasis_and_pooled_from_the_first_chunk(model, tiny):
    cond = model.text.encode_prompt("a red circle BREAK a blue square", 4).parts[0][0].at(0)
    first, pooled = _reference(model, tiny, "a red circle")
    second, _ = _reference(model, tiny, "a blue square")
    torch.testing.assert_close(cond.context, torch.cat([first, second]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cond.pooled, pooled, rtol=1e-5, atol=1e-5)
    # "Original" emphasis: each encoder's part weighted and brought back to its own mean; pooled untouched
    weighted = model.text.encode_prompt("a (red:1.5) circle", 4).parts[0][0].at(0)
    plain, pooled = _reference(model, tiny, "a red circle")
    weights = torch.ones(77, 1)
    weights[2] = 1.5  # BOS, "a", "red"
    for part in (slice(0, CLIP_L_W), slice(CLIP_L_W, None)):
        z = plain[:, part]
        expected = z * weights * (z.mean() / (z * weights).mean())
        torch.testing.assert_close(weighted.context[:, part], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weighted.pooled, pooled, rtol=1e-5, atol=1e-5)


def test_empty_negative_prompt_is_zero_and_others_are_encoded(model, tiny):
    zero = model.text.encode_negative("", 4).at(0)
    assert zero.context.shape == (77, CLIP_L_W + BIGG_W) and not zero.context.any() and not zero.pooled.any()
    blurry = model.text.encode_negative("blurry", 4).at(0)
    context, pooled = _reference(model, tiny, "blurry")
    torch.testing.assert_close(blurry.context, context, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(blurry.pooled, pooled, rtol=1e-5, atol=1e-5)
    # a schedule that is not all empty is encoded, its empty text too (A1111 zeroes only an all-empty batch)
    edited = model.text.encode_negative("[:blurry:2]", 4)
    context, pooled = _reference(model, tiny, "")
    torch.testing.assert_close(edited.at(0).context, context, rtol=1e-5, atol=1e-5)
    assert edited.at(0).pooled.any()
    # the positive prompt "" is encoded too
    assert model.text.encode_prompt("", 4).parts[0][0].at(0).pooled.any()


def test_prompt_editing_changes_context_and_pooled_together(model, tiny):
    scheduled = model.text.encode_prompt("a [red:blue:2] circle", 6).parts[0][0]
    for step, word in ((0, "red"), (3, "blue")):
        context, pooled = _reference(model, tiny, f"a {word} circle")
        torch.testing.assert_close(scheduled.at(step).pooled, pooled, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(scheduled.at(step).context, context, rtol=1e-5, atol=1e-5)


def test_the_positions_counted_before_encoding_are_those_encoded(model):
    """What the memory check before a job counts for the prompts' conditioning (see generation/memory.py); an
    empty negative prompt is one chunk of zeros."""
    for prompt, negative in (("a cat", ""), LONG_PROMPT):
        assert model.text.context_positions(prompt, negative, 6) == encoded_positions(model, prompt, negative, 6)
    assert model.text.width == model.text.encode("a cat").shape[-1]  # both encoders: the width counted


def test_clip_skip_leaves_sdxl_alone_unless_sdxl_clip_l_skip(model):
    text = model.text
    assert torch.equal(text.encode("a red circle", clip_skip=2), text.encode("a red circle"))
    text.clip_l.clip_l_skip = True
    try:  # A1111's sdxl_clip_l_skip: CLIP-L takes hidden_states[-clip_skip] (2: the penultimate, the default here)
        skip1, skip2 = text.encode("a red circle", clip_skip=1), text.encode("a red circle", clip_skip=2)
    finally:
        text.clip_l.clip_l_skip = False
    torch.testing.assert_close(skip2, text.encode("a red circle"))
    assert not torch.allclose(skip1[:, :CLIP_L_W], skip2[:, :CLIP_L_W])
    torch.testing.assert_close(skip1[:, CLIP_L_W:], skip2[:, CLIP_L_W:])


# --- the U-Net's extra inputs ---------------------------------------------------------------------------

def test_time_ids_are_embedded_as_sgm_does(model):
    """sgm's ConcatTimestepEmbedderND embeds each size value with timestep_embedding (cos half, then sin);
    diffusers' add_time_proj must give the same numbers."""
    values = torch.tensor([1024.0, 832.0, 0.0, 0.0, 1216.0, 64.0])
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = values[:, None] * freqs[None]
    sgm = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    torch.testing.assert_close(model.unet.add_time_proj(values), sgm)
    assert model.text.unet_inputs(832, 1216)["time_ids"].tolist() == [1216, 832, 0, 0, 1216, 832]


@torch.no_grad()
def test_denoiser_passes_pooled_and_time_ids_per_sub_prompt(model):
    text = model.text
    cond = text.encode_prompt("a red circle :1.5 AND a blue square :-0.5", 4)
    uncond = text.encode_negative("blurry", 4)
    extra = text.unet_inputs(64, 48)
    x = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500.0)

    def direct(c):
        added = {"text_embeds": c.pooled.expand(2, -1), "time_ids": torch.tensor([[48.0, 64, 0, 0, 48, 64]] * 2)}
        return model.unet(x, t.expand(2), encoder_hidden_states=c.context.expand(2, -1, -1),
                          added_cond_kwargs=added).sample
    (c1, _), (c2, _) = cond.parts
    e1, e2, eu = direct(c1.at(0)), direct(c2.at(0)), direct(uncond.at(0))
    expected = eu + (e1 - eu) * (1.5 * 6.0) + (e2 - eu) * (-0.5 * 6.0)
    tol = dict(rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    torch.testing.assert_close(pipeline.Denoiser(model, cond, uncond, 6.0, None, extra)(x, t), expected, **tol)
    model.batch_cond_uncond = False  # cond and uncond as separate U-Net batches
    try:
        torch.testing.assert_close(pipeline.Denoiser(model, cond, uncond, 6.0, None, extra)(x, t), expected, **tol)
    finally:
        model.batch_cond_uncond = True
    # the size reaches the U-Net
    other = pipeline.Denoiser(model, cond, uncond, 6.0, None, text.unet_inputs(1024, 1024))(x, t)
    assert (other - expected).abs().max() > 1e-3


@torch.no_grad()
def test_sampling_agrees_with_diffusers_sdxl_pipeline(model):
    """diffusers' StableDiffusionXLPipeline on the same modules (negative_prompt=None: its zero negative,
    A1111's for ""), Euler, 4 steps on the linspace grid (integer timesteps, where both interpolations
    agree), the same start noise: the final latents agree to 1e-4 (float rounding of different batching)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(paths.TOKENIZER_DIR), local_files_only=True)
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(paths.TOKENIZER_DIR), local_files_only=True, pad_token="!")
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="linspace", num_train_timesteps=1000)
    pipe = StableDiffusionXLPipeline(model.vae, model.text.clip_l.text_model, model.text.clip_g.text_model, tokenizer,
                                     tokenizer_2, model.unet, scheduler, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    gens = rng.create_generators([11], "CPU", torch.device("cpu"))
    noise = rng.initial_noise(gens, (4, 8, 6), torch.device("cpu"))
    theirs = pipe("a red circle", negative_prompt=None, height=64, width=48, num_inference_steps=4,
                  guidance_scale=7.0, latents=noise.clone(), output_type="latent").images
    denoiser = pipeline.Denoiser(model, model.text.encode_prompt("a red circle", 4), model.text.encode_negative("", 4),
                                 7.0, None, model.text.unet_inputs(48, 64))
    ours = pipeline.sample(model, denoiser, noise, samplers.resolve("Euler"), 4, gens, pipeline.Hooks())
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())


# --- through the engine -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(data):
    e = make_engine(data, checkpoint="sdxl.safetensors")
    yield e
    e.queue.stop()


def test_txt2img_is_deterministic_and_img2img_runs(engine):
    params = dict(prompt="a red circle :1.2 AND a [blue:green:2] square", negative_prompt="", width=64, height=80,
                  steps=4, sampler_name="Euler a", seed=21, save_images=False)
    a = engine.txt2img(GenerationParams(**params))
    b = engine.txt2img(GenerationParams(**params))
    c = engine.txt2img(GenerationParams(**{**params, "seed": 22}))
    assert a.images[0].size == (64, 80)
    assert a.images[0].tobytes() == b.images[0].tobytes() != c.images[0].tobytes()
    # SDXL's linear layers stay PyTorch's own on a CPU (the family's cpu_onednn_linear: peak memory)
    assert not SDXL.cpu_onednn_linear
    assert all(type(m) is torch.nn.Linear for m in engine.checkpoints.current.unet.modules()
               if isinstance(m, torch.nn.Linear))
    # nor is its first self-attention shared between the CFG halves: its pooled prompt makes them differ from the
    # start, and on a GPU the comparison would wait for the device on every call
    assert not any(isinstance(p, optimizations.SharedRows)
                   for p in engine.checkpoints.current.unet.attn_processors.values())
    assert "Model: sdxl" in a.infotexts[0]
    edited = engine.img2img(Img2ImgParams(init_images=[init_image()], prompt="a blue circle", negative_prompt="ugly",
                                          width=64, height=64, steps=4, denoising_strength=0.6, seed=3,
                                          save_images=False))
    assert edited.images[0].size == (64, 64)
    assert len(set(edited.images[0].getdata())) > 10  # a picture, not a flat colour


def test_inpainting_model_and_hires_fix_run(engine):
    engine.options.update({"sd_model_checkpoint": "sdxl-inpaint.safetensors"})
    try:
        result = engine.txt2img(GenerationParams(prompt="a cat", width=64, height=64, steps=3, seed=5,
                                                 save_images=False))
        assert result.images[0].size == (64, 64)
        original = init_image()
        inpainted = engine.img2img(Img2ImgParams(init_images=[original], mask=left_half_mask(), prompt="a cat",
                                                 width=64, height=64, steps=3, seed=5, denoising_strength=0.9,
                                                 mask_blur=0, save_images=False)).images[0]
        assert engine.checkpoints.current.config.label == "SDXL inpainting"
        kept = (48, 0, 64, 64)  # right of the mask: pasted back from the original
        assert inpainted.crop(kept).tobytes() == original.crop(kept).tobytes()
        assert inpainted.crop((0, 0, 24, 64)).tobytes() != original.crop((0, 0, 24, 64)).tobytes()
    finally:
        engine.options.update({"sd_model_checkpoint": "sdxl.safetensors"})
    seen: list[tuple] = []  # the time ids of every U-Net call: each pass has its own size (A1111's hr conds)

    def record(_module, _args, kwargs):
        seen.append(tuple(kwargs["added_cond_kwargs"]["time_ids"][0].tolist()))
    engine.txt2img(GenerationParams(prompt="warm-up", width=64, height=64, steps=1, save_images=False))
    handle = engine.checkpoints.current.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        hires = engine.txt2img(GenerationParams(prompt="a cat", width=64, height=80, steps=3, seed=5, enable_hr=True,
                                                hr_scale=1.5, hr_upscaler="Latent", save_images=False))
    finally:
        handle.remove()
    assert hires.images[0].size == (96, 120)
    assert set(seen[:3]) == {(80, 64, 0, 0, 80, 64)} and set(seen[3:]) == {(120, 96, 0, 0, 120, 96)}


def test_the_lora_cards_list_the_networks_for_sdxl(engine, data):
    """A1111's Lora page with an SDXL model loaded: networks whose metadata says SDXL, and those that say nothing;
    not SD 1's (unless lora_show_all)."""
    from modules.ui import extra_networks as extra_networks_ui

    folder = data / "models" / "Lora"
    folder.mkdir(parents=True, exist_ok=True)
    weights = {"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}
    save_file(weights, str(folder / "xl-style.safetensors"), {"ss_base_model_version": "sdxl_base_v1-0"})
    save_file(weights, str(folder / "sd15-style.safetensors"), {"ss_base_model_version": "sd_v1"})
    save_file(weights, str(folder / "plain.safetensors"))
    assert extra_networks_ui.model_version(engine) == "SDXL"
    assert [c.name for c in extra_networks_ui.listing(engine)["Lora"]] == ["plain", "xl-style"]
    engine.set_options({"lora_show_all": True})
    try:
        assert [c.name for c in extra_networks_ui.listing(engine)["Lora"]] == ["plain", "sd15-style", "xl-style"]
    finally:
        engine.set_options({"lora_show_all": False})


def test_sdxl_settings_reach_the_encoder_per_job(engine):
    """sdxl_clip_l_skip and sdxl_crop_top/left (A1111's settings) apply to the job that has them, through
    override_settings too, and the next job without them is as before."""
    seen: list[tuple] = []

    def record(_module, _args, kwargs):
        seen.append(tuple(kwargs["added_cond_kwargs"]["time_ids"][0].tolist()))
    base = dict(prompt="a red circle", width=64, height=64, steps=2, seed=8, save_images=False)
    engine.txt2img(GenerationParams(prompt="warm-up", width=64, height=64, steps=1, save_images=False))
    handle = engine.checkpoints.current.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        plain = engine.txt2img(GenerationParams(**base)).images[0]
        cropped = engine.txt2img(GenerationParams(**base, override_settings={"sdxl_crop_top": 16,
                                                                            "sdxl_crop_left": 8})).images[0]
    finally:
        handle.remove()
    assert set(seen[:2]) == {(64, 64, 0, 0, 64, 64)} and set(seen[2:]) == {(64, 64, 16, 8, 64, 64)}
    assert plain.tobytes() != cropped.tobytes()

    skip2 = dict(base, override_settings={"CLIP_stop_at_last_layers": 2})
    assert engine.txt2img(GenerationParams(**skip2)).images[0].tobytes() == plain.tobytes()  # bigG/CLIP-L as before
    with_l = dict(base, override_settings={"CLIP_stop_at_last_layers": 1, "sdxl_clip_l_skip": True})
    assert engine.txt2img(GenerationParams(**with_l)).images[0].tobytes() != plain.tobytes()  # CLIP-L's last layer
    assert engine.txt2img(GenerationParams(**base)).images[0].tobytes() == plain.tobytes()  # nothing left behind


def test_fp16_and_bf16_files_load(tmp_path, tiny, model):
    for dtype in (torch.float16, torch.bfloat16):
        folder = tmp_path / str(dtype)
        tiny.write(folder / "models" / "Stable-diffusion" / "half.safetensors", dtype=dtype)
        manager = make_manager(folder)
        half = manager.get(manager.checkpoints.find("half.safetensors"))
        cond = half.text.encode_prompt("a red circle", 4).parts[0][0].at(0)
        reference = model.text.encode_prompt("a red circle", 4).parts[0][0].at(0)
        assert torch.isfinite(cond.context).all() and cond.pooled is not None
        torch.testing.assert_close(cond.pooled.float(), reference.pooled, rtol=0.05, atol=0.05)


# --- the shipped configs at SDXL's real size ------------------------------------------------------------------

def _full_size_sdxl_state_dict(in_channels: int) -> dict[str, torch.Tensor]:
    """An SDXL 1.0 checkpoint's names and shapes (diffusers' published SDXL component configs), on the meta
    device: no memory, no values."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from modules.models import ldm_export

    with init_empty_weights():
        unet = UNet2DConditionModel(
            in_channels=in_channels, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20], use_linear_projection=True,
            cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        vae = AutoencoderKL(latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        ids = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407)
        clip_l = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                              num_attention_heads=12, hidden_act="quick_gelu", **ids))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu",
            projection_dim=1280, **ids))
    return ldm_export.checkpoint_state_dict(unet, vae, clip_l, "sdxl", clip_g)


@pytest.mark.parametrize("in_channels", [4, 9])
def test_shipped_configs_fit_full_size_sdxl(in_channels):
    """Every component built from configs/sd_xl_*.yaml takes every full-size tensor by name and shape: loading
    stops only at the values the meta device does not have."""
    sd = _full_size_sdxl_state_dict(in_channels)
    assert sd["conditioner.embedders.1.model.text_projection"].shape == (1280, 1280)
    path = SDXL.config_file(FamilyMatch(in_channels == 9, "epsilon"), ConfigFiles(paths.CONFIGS, paths.CONFIGS))
    config = ModelConfig(path, read_yaml(path), SDXL, "epsilon", "detected")
    assert config.in_channels == in_channels
    builds = [lambda: loader.build_unet(config, sd, sdxl.unet_settings(config)),
              lambda: loader.build_vae(loader.vae_config(config, sd), sd, config),
              lambda: sdxl.build_clip_l(config, sd), lambda: sdxl.build_clip_g(config, sd)]
    for build in builds:
        with pytest.raises(CheckpointError, match="is missing weights for"):
            build()
    clip_l = config.params["conditioner_config"]["params"]["emb_models"][0]["params"]
    assert clip_l == {"layer": "hidden", "layer_idx": 11}  # hidden_states[11] of CLIP-L's 12 layers
