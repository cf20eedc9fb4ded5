"""Grids of a job's images, as A1111 makes them: about square, saved as grid-NNNN.png, first in the API."""

from __future__ import annotations

import json

from PIL import Image

from modules import images
from tests.support.generation import engine, params  # noqa: F401  (fixture)
from tests.support.server import decode, post, server  # noqa: F401  (fixture)


def test_grid_layout():
    tiles = [Image.new("RGB", (8, 4), (i * 40, 0, 0)) for i in range(5)]
    grid = images.image_grid(tiles, batch_size=5)
    assert grid.size == (24, 8)  # round(sqrt(5)) = 2 rows, 3 columns, black where nothing is
    assert grid.getpixel((8 * 2 + 1, 5)) == (0, 0, 0) and grid.getpixel((8 + 1, 5)) == (160, 0, 0)
    assert images.image_grid(tiles[:4], batch_size=2, n_rows=0).size == (16, 8)


def test_job_with_several_images_saves_and_returns_a_grid(engine, data_dir):  # noqa: F811
    r = engine.txt2img(params(batch_size=2, n_iter=2, steps=2))
    assert r.grid is not None and r.grid.size == (128, 128) and len(r.images) == 4
    assert r.grid.info["parameters"] == r.infotexts[0]
    saved = list((data_dir / "outputs" / "txt2img-grids").rglob("grid-*.png"))
    assert [p.name for p in saved] == ["grid-0000.png"]
    assert engine.txt2img(params(steps=2)).grid is None  # one image: no grid
    assert engine.txt2img(params(batch_size=2, steps=2, save_images=False)).grid is None


def test_api_returns_the_grid_first_when_saving(server):  # noqa: F811
    url, _, _ = server
    body = post(url, "/sdapi/v1/txt2img", prompt="a cat", width=64, height=64, steps=2, seed=4, batch_size=2,
                save_images=True).json()
    info = json.loads(body["info"])
    assert [decode(b).size for b in body["images"]] == [(128, 64), (64, 64), (64, 64)]
    assert info["index_of_first_image"] == 1 and len(info["infotexts"]) == 3 and info["all_seeds"] == [4, 5]
    plain = post(url, "/sdapi/v1/txt2img", prompt="a cat", width=64, height=64, steps=2, batch_size=2).json()
    assert len(plain["images"]) == 2  # the API's default save_images=False: no grid (A1111 the same)


def test_grid_only_if_multiple_off_gives_a_job_of_one_image_its_grid(engine, data_dir):  # noqa: F811
    one = engine.txt2img(params(steps=2, override_settings={"grid_only_if_multiple": False}))
    assert one.grid is not None and one.grid.size == one.images[0].size
    assert [p.name for p in (data_dir / "outputs" / "txt2img-grids").rglob("grid-*.png")] == ["grid-0000.png"]
