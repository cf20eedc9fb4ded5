"""The SD 2 depth model's depth estimator (modules/models/depth.py): MiDaS DPT-Hybrid weights in the original
layout mapped onto transformers' DPT, MiDaS's input preparation, and the U-Net's fifth channel."""

from __future__ import annotations

import pytest
import torch
from transformers import DPTForDepthEstimation

from modules.models import depth
from modules.models.checkpoint_file import CheckpointError
from tests.support import tiny_models

# Names transformers' own DPT-Hybrid conversion (convert_dpt_hybrid_to_pytorch.py: rename_key and
# read_in_q_k_v; the script is not in the wheel) gives these MiDaS tensors, worked through its rules by hand.
CONVERSION = {
    "pretrained.model.cls_token": "dpt.embeddings.cls_token",
    "pretrained.model.pos_embed": "dpt.embeddings.position_embeddings",
    "pretrained.model.patch_embed.proj.weight": "dpt.embeddings.projection.weight",
    "pretrained.model.patch_embed.backbone.stem.conv.weight": "dpt.embeddings.backbone.bit.embedder.convolution.weight",
    "pretrained.model.patch_embed.backbone.stem.norm.bias": "dpt.embeddings.backbone.bit.embedder.norm.bias",
    "pretrained.model.patch_embed.backbone.stages.1.blocks.1.conv2.weight":
        "dpt.embeddings.backbone.bit.encoder.stages.1.layers.1.conv2.weight",
    "pretrained.model.patch_embed.backbone.stages.0.blocks.0.downsample.norm.weight":
        "dpt.embeddings.backbone.bit.encoder.stages.0.layers.0.downsample.norm.weight",
    "pretrained.model.blocks.7.norm1.bias": "dpt.encoder.layer.7.layernorm_before.bias",
    "pretrained.model.blocks.7.norm2.weight": "dpt.encoder.layer.7.layernorm_after.weight",
    "pretrained.model.blocks.3.attn.proj.weight": "dpt.encoder.layer.3.attention.output.dense.weight",
    "pretrained.model.blocks.11.mlp.fc1.bias": "dpt.encoder.layer.11.intermediate.dense.bias",
    "pretrained.model.blocks.0.mlp.fc2.weight": "dpt.encoder.layer.0.output.dense.weight",
    "pretrained.model.norm.weight": "dpt.layernorm.weight",
    "pretrained.act_postprocess3.0.project.0.weight": "neck.reassemble_stage.readout_projects.2.0.weight",
    "pretrained.act_postprocess4.0.project.0.bias": "neck.reassemble_stage.readout_projects.3.0.bias",
    "pretrained.act_postprocess3.3.weight": "neck.reassemble_stage.layers.2.projection.weight",
    "pretrained.act_postprocess4.3.bias": "neck.reassemble_stage.layers.3.projection.bias",
    "pretrained.act_postprocess4.4.weight": "neck.reassemble_stage.layers.3.resize.weight",
    "scratch.layer1_rn.weight": "neck.convs.0.weight",
    "scratch.layer4_rn.weight": "neck.convs.3.weight",
    "scratch.refinenet4.resConfUnit2.conv1.bias": "neck.fusion_stage.layers.0.residual_layer2.convolution1.bias",
    "scratch.refinenet1.out_conv.weight": "neck.fusion_stage.layers.3.projection.weight",
    "scratch.refinenet2.resConfUnit1.conv2.weight": "neck.fusion_stage.layers.2.residual_layer1.convolution2.weight",
    "scratch.output_conv.0.weight": "head.head.0.weight",
    "scratch.output_conv.4.bias": "head.head.4.bias",
}


@pytest.fixture(scope="module")
def midas() -> dict[str, torch.Tensor]:
    return tiny_models.build_midas(seed=5, with_head=True)


def test_every_tensor_finds_its_place_in_transformers_dpt_hybrid(midas):
    mapped = depth.to_transformers(midas)
    model = DPTForDepthEstimation(depth.config_from(midas))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected  # all of them, once, with their shapes
    for original, target in CONVERSION.items():
        assert torch.equal(mapped[target], midas[original]), (original, target)


def test_the_fused_qkv_is_split_into_query_key_and_value(midas):
    mapped = depth.to_transformers(midas)
    w = midas["pretrained.model.blocks.9.attn.qkv.weight"]
    b = midas["pretrained.model.blocks.9.attn.qkv.bias"]
    h = tiny_models.MIDAS_WIDTH
    for i, part in enumerate(("query", "key", "value")):
        assert torch.equal(mapped[f"dpt.encoder.layer.9.attention.attention.{part}.weight"], w[i * h:(i + 1) * h])
        assert torch.equal(mapped[f"dpt.encoder.layer.9.attention.attention.{part}.bias"], b[i * h:(i + 1) * h])


def test_the_configuration_is_read_from_the_weights(midas):
    config = depth.config_from(midas)
    assert config.is_hybrid and config.readout_type == "project"
    assert config.hidden_size == tiny_models.MIDAS_WIDTH and config.num_hidden_layers == tiny_models.MIDAS_BLOCKS
    assert config.backbone_out_indices[2:] == [8, 11]
    assert config.backbone_config.depths == [d for d, _ in tiny_models.MIDAS_STAGES]
    assert config.backbone_config.hidden_sizes == [w for _, w in tiny_models.MIDAS_STAGES]
    assert config.neck_hidden_sizes == [128, 256, 32, 32] and config.fusion_hidden_size == tiny_models.MIDAS_FUSION
    assert config.image_size == 384  # 24 x 24 position embeddings of 16-pixel patches


def test_a_tensor_of_another_model_is_named_in_the_error(midas):
    with pytest.raises(CheckpointError, match="scratch.refinenet1.extra.weight"):
        depth.to_transformers({**midas, "scratch.refinenet1.extra.weight": torch.zeros(1)})
    broken = {k: v for k, v in midas.items() if not k.startswith("scratch.layer2_rn")}
    with pytest.raises(CheckpointError, match="scratch.layer2_rn.weight"):
        depth.config_from(broken)


@pytest.mark.parametrize("size, expected", [
    ((512, 512), (384, 384)),
    ((512, 768), (384, 576)),  # portrait: the width's scale (0.75) is closer to 1 than the height's (0.5)
    ((768, 512), (576, 384)),
    ((128, 256), (192, 384)),  # small: the height's scale (1.5) is closer to 1 than the width's (3)
    ((1000, 300), (1280, 384)),  # the height's scale 1.28; the width 1280 exactly
    ((100, 50), (384, 192)),
    ((520, 400), (512, 384)),  # the height fits (0.96); 499.2 rounds to 512, the nearest multiple of 32
])
def test_midas_resizes_as_its_minimal_mode_does(size, expected):
    assert depth.midas_input_size(*size) == expected


def test_preprocessing_maps_the_image_range_through_mean_and_std_half():
    # [-1, 1] -> [0, 1] -> (x - 0.5) / 0.5: back to [-1, 1]; a flat image stays flat through bicubic resizing
    for value in (-1.0, -0.25, 0.0, 0.6, 1.0):
        out = depth.preprocess(torch.full((1, 3, 64, 96), value))
        assert out.shape == (1, 3, 256, 384)  # (96 x 64): the height's scale 6 vs the width's 4 -> width 384
        assert torch.allclose(out, torch.full_like(out, value), atol=1e-6)
    ramp = torch.linspace(-1, 1, 384).expand(1, 3, 384, 384)
    assert torch.allclose(depth.preprocess(ramp), ramp, atol=1e-6)  # already 384: no resampling


def test_the_depth_channel_spans_minus_one_to_one_at_the_latent_size(midas):
    model = depth.build(midas)
    g = torch.Generator().manual_seed(0)
    picture = torch.rand((1, 3, 64, 96), generator=g) * 2 - 1
    raw = depth.estimate(model, depth.preprocess(picture))
    assert raw.shape == (1, 1, 256, 384)
    cond, big = depth.conditioning(model, picture, (8, 12), (64, 96))
    assert cond.shape == (1, 1, 8, 12) and big.shape == (1, 1, 64, 96)
    assert big.min().item() == pytest.approx(-1.0) and big.max().item() == pytest.approx(1.0)
    assert cond.min().item() == pytest.approx(-1.0) and cond.max().item() == pytest.approx(1.0)
    # the normalisation is min-max over the bicubic-resized map, exactly
    resized = torch.nn.functional.interpolate(raw, size=(8, 12), mode="bicubic", align_corners=False)
    assert torch.allclose(cond, 2 * (resized - resized.min()) / (resized.max() - resized.min()) - 1, atol=1e-6)
    # and the picture matters
    other, _ = depth.conditioning(model, torch.flip(picture, dims=[-1]), (8, 12))
    assert not torch.allclose(cond, other)


def test_the_depth_picture_is_grey_with_near_white():
    cond = torch.tensor([[[[-1.0, 0.0, 1.0]]]])
    assert list(depth.depth_image(cond).getdata()) == [0, 128, 255]


def test_on_a_square_input_the_estimate_is_transformers_own_forward(midas):
    # estimate() runs the model's parts itself so that non-square pictures work; on a square one it must give
    # exactly what DPTForDepthEstimation.forward gives
    model = depth.build(midas)
    x = torch.randn((1, 3, 128, 128), generator=torch.Generator().manual_seed(3))
    ours = depth.estimate(model, x)
    model.dpt.embeddings.image_size = (128, 128)
    theirs = model(pixel_values=x).predicted_depth
    assert torch.allclose(ours[:, 0], theirs, atol=1e-6)


# --- the depth model in the engine ---------------------------------------------------------------------------

from PIL import Image  # noqa: E402

from modules import images  # noqa: E402
from modules.services.errors import BadRequest  # noqa: E402
from modules.generation import pipeline  # noqa: E402
from modules.generation.params import GenerationParams  # noqa: E402
from modules.models import families  # noqa: E402
from tests.support.engine import make_engine  # noqa: E402
from tests.support.img2img import init_image, params  # noqa: E402


@pytest.fixture(scope="module")
def depth_data(tmp_path_factory):
    """A data folder with a tiny SD 2 depth model carrying its MiDaS (depth.safetensors) and one saved without
    it (depth-bare.safetensors), each with its YAML; models/midas empty."""
    d = tmp_path_factory.mktemp("depth")
    folder = d / "models" / "Stable-diffusion"
    tiny_models.build("sd2", depth=True, seed=11).write(folder / "depth.safetensors")
    tiny_models.build("sd2", depth=True, seed=11, midas=False).write(folder / "depth-bare.safetensors")
    return d


@pytest.fixture(scope="module")
def depth_engine(depth_data):
    e = make_engine(depth_data, "depth.safetensors")
    yield e
    e.queue.stop()


def test_a_depth_checkpoint_is_told_by_its_five_channel_unet(depth_data, tmp_path):
    bare = tmp_path / "no-yaml.safetensors"
    tiny_models.build("sd2", depth=True, seed=11).write(bare, yaml_beside=False)
    config = families.detect_from_header(bare, families.CONFIGS / "v1-inference.yaml")
    assert config.yaml_path.name == "v2-midas-inference.yaml" and config.is_depth
    assert config.prediction_type == "epsilon" and config.label == "SD 2.x depth"


def test_img2img_feeds_the_unet_the_depth_of_the_init_image(depth_engine):
    first = depth_engine.img2img(params(steps=3, init_images=[init_image((96, 64))]))
    assert first.images[0].size == (64, 64)
    model = depth_engine.checkpoints.current
    assert model.config.is_depth and model.depth_model is not None  # the file's own MiDaS, built at load
    seen = []
    handle = model.unet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        again = depth_engine.img2img(params(steps=3, init_images=[init_image((96, 64))]))
    finally:
        handle.remove()
    assert again.images[0].tobytes() == first.images[0].tobytes()
    # every U-Net call got 5 channels, the fifth the MiDaS depth of the init image resized to the job's size
    resized = images.resize_image(0, init_image((96, 64)), 64, 64)
    expected, _ = depth.conditioning(model.depth_model, pipeline.image_to_tensor(resized)[None], (8, 8))
    assert seen and all(x.shape[1] == 5 for x in seen)
    for x in seen:
        assert torch.allclose(x[:, 4:5], expected.expand(x.shape[0], -1, -1, -1), atol=1e-6)
    assert expected.min() == -1 and expected.max() == 1


def test_txt2img_with_the_depth_model_says_to_use_img2img(depth_engine):
    with pytest.raises(BadRequest, match="SD 2 depth model.*img2img"):
        depth_engine.txt2img(GenerationParams(prompt="a cube", width=64, height=64, steps=2,
                                              override_settings={"sd_model_checkpoint": "depth.safetensors"}))


def test_without_midas_anywhere_the_message_names_the_file_and_the_folder(depth_data, depth_engine):
    bare = params(steps=2, override_settings={"sd_model_checkpoint": "depth-bare.safetensors"})
    with pytest.raises(BadRequest) as e:
        depth_engine.img2img(bare)
    folder = depth_data / "models" / "midas"
    assert str(folder / depth.MIDAS_FILE) in str(e.value) and "Nothing is downloaded" in str(e.value)
    # the file A1111 uses, placed there: the same MiDaS the other file carries gives the same image
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_models.build_midas(seed=11), folder / depth.MIDAS_FILE)
    from_file = depth_engine.img2img(bare)
    carried = depth_engine.img2img(params(steps=2, override_settings={"sd_model_checkpoint": "depth.safetensors"}))
    assert np_equal(from_file.images[0], carried.images[0])


def np_equal(a, b) -> bool:
    return a.tobytes() == b.tobytes()


def test_the_depth_map_is_shown_after_the_images_and_saved_when_the_setting_asks(depth_engine, depth_data):
    plain = depth_engine.img2img(params(steps=2, batch_size=2))
    assert len(plain.images) == 2  # the setting is off by default
    folder = depth_data / "outputs" / "img2img-images"
    before = set(folder.rglob("*.png")) if folder.exists() else set()
    shown = depth_engine.img2img(params(steps=2, batch_size=2, save_images=True,
                                        override_settings={"depth_map_show": True}))
    assert len(shown.images) == 3 and len(shown.infotexts) == 3
    assert [im.tobytes() for im in shown.images[:2]] == [im.tobytes() for im in plain.images]
    picture = shown.images[2]
    assert picture.mode == "L" and picture.size == (64, 64)
    values = sorted(set(picture.getdata()))
    assert values[0] == 0 and values[-1] == 255  # min-max normalised: the nearest point is white
    new = sorted(set(folder.rglob("*.png")) - before)
    depth_files = [p for p in new if p.name.startswith("depth-")]
    assert len(new) == 3 and len(depth_files) == 1, new
    with Image.open(depth_files[0]) as saved:
        assert saved.convert("L").tobytes() == picture.tobytes()
