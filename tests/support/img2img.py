"""img2img and inpainting inputs (a picture, a mask, the request most tests start from) and one engine over the
tiny checkpoints per test module."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image, ImageDraw

from modules.generation.params import Img2ImgParams
from tests.support.engine import make_engine, make_manager


def init_image(size=(64, 64)) -> Image.Image:
    img = Image.new("RGB", size, (200, 40, 30))
    draw = ImageDraw.Draw(img)
    draw.ellipse((size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4), fill=(20, 60, 220))
    draw.rectangle((0, 0, size[0] // 8, size[1]), fill=(240, 240, 20))
    return img


def left_half_mask(size=(64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((0, 0, size[0] // 2 - 1, size[1]), fill=255)
    return mask


def params(**kw) -> Img2ImgParams:
    base = dict(init_images=[init_image()], prompt="a blue circle", negative_prompt="green", width=64, height=64,
                steps=8, sampler_name="Euler a", seed=7, save_images=False)
    return Img2ImgParams(**{**base, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("img2img")
    shutil.copytree(tiny_dir, d / "models" / "Stable-diffusion")
    return d


@pytest.fixture(scope="module")
def manager(data):
    return make_manager(data)


@pytest.fixture(scope="module")
def engine(data):
    e = make_engine(data)
    yield e
    e.queue.stop()
