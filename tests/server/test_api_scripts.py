"""Scripts over HTTP on a live server: webuiapi's txt2img with A1111's `script_name: "x/y/z plot"` and its
script_args, the grid first then the cells; /scripts and /script-info; an unknown script or a bad axis value
answered 4xx with what is wrong; a plot's grid infotext sent back as `infotext` makes the plot again."""

from __future__ import annotations

import base64
import io
import json

import requests
import webuiapi
from PIL import Image

from tests.support.server import decode, post, server  # noqa: F401  (fixture)

# A1111's X/Y/Z plot script_args: x_type, x_values, x_values_dropdown, y_type, ..., draw_legend,
# include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size,
# csv_mode. Types are indexes into the txt2img list: 4 Steps, 6 CFG Scale, 9 Sampler, 1 Seed.
STEPS, CFG, SAMPLER, SEED = 4, 6, 9, 1


def xyz_args(x_type, x_values, y_type=0, y_values="", lone=True, dropdown=()):
    return [x_type, x_values, list(dropdown), y_type, y_values, [], 0, "", [],
            True, lone, False, False, False, False, False, 0, False]


def test_xyz_plot_through_webuiapi(server):  # noqa: F811
    url, _, _ = server
    api = webuiapi.WebUIApi(baseurl=url + "/sdapi/v1", sampler="Euler a", steps=2)
    result = api.txt2img(prompt="a cat", width=64, height=64, seed=11, script_name="x/y/z plot",
                         script_args=xyz_args(STEPS, "1-2", CFG, "3, 7"))
    assert len(result.images) == 5  # the grid, then the four cells
    grid = result.images[0]
    assert grid.width > 128 and grid.height > 128 and all(im.size == (64, 64) for im in result.images[1:])
    info = result.info
    assert info["index_of_first_image"] == 1 and len(info["infotexts"]) == 5
    assert "Script: X/Y/Z plot, X Type: Steps, X Values: 1-2, Y Type: CFG Scale" in info["infotexts"][0]
    assert [t.split("Steps: ")[1].split(",")[0] for t in info["infotexts"][1:]] == ["1", "2", "1", "2"]
    assert grid.info["parameters"] == info["infotexts"][0]  # the grid's PNG carries its infotext


def test_grid_only_by_default_and_the_dropdown_values(server):  # noqa: F811
    url, _, _ = server
    body = post(url, "/sdapi/v1/txt2img", prompt="a cat", width=64, height=64, steps=1, script_name="X/Y/Z plot",
                script_args=xyz_args(SAMPLER, "", lone=False, dropdown=["Euler", "DDIM"])).json()
    assert len(body["images"]) == 1 and decode(body["images"][0]).width == 128
    assert "X Values: \"Euler,DDIM\"" in json.loads(body["info"])["infotexts"][0]


def test_scripts_are_listed(server):  # noqa: F811
    url, _, _ = server
    names = requests.get(url + "/sdapi/v1/scripts", timeout=30).json()
    assert names == {"txt2img": ["prompt matrix", "prompts from file or textbox", "x/y/z plot"],
                     "img2img": ["loopback", "outpainting mk2", "poor man's outpainting", "prompt matrix",
                                 "prompts from file or textbox", "sd upscale", "x/y/z plot", "soft inpainting"]}
    info = requests.get(url + "/sdapi/v1/script-info", timeout=30).json()
    plot = next(s for s in info if s["name"] == "x/y/z plot" and not s["is_img2img"])
    assert len(plot["args"]) == 18 and plot["args"][0]["choices"][STEPS] == "Steps"
    assert plot["args"][9]["label"] == "Draw legend" and plot["args"][16]["label"] == "Grid margins (px)"
    upscale = next(s for s in info if s["name"] == "sd upscale")
    assert upscale["is_img2img"] and [a["label"] for a in upscale["args"]] == ["info", "Tile overlap", "Upscaler",
                                                                               "Scale Factor"]
    assert upscale["args"][2]["choices"][:3] == ["None", "Lanczos", "Nearest"]
    loop = next(s for s in info if s["name"] == "loopback")
    assert loop["is_img2img"] and [a["label"] for a in loop["args"]] == [
        "Loops", "Final denoising strength", "Denoising strength curve", "Append interrogated prompt at each iteration"]


def png_b64(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> str:
    """A plain PNG as an API's init image."""
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_sd_upscale_over_the_api(server):  # noqa: F811
    """A1111's script_args: info, overlap, upscaler (index or name), scale factor; one image, the tiles' size in
    its infotext."""
    url, _, _ = server
    init = png_b64((120, 30, 200), (80, 80))
    body = post(url, "/sdapi/v1/img2img", prompt="a cat", width=64, height=64, steps=1, batch_size=4,
                denoising_strength=0.3, init_images=[init],
                script_name="SD upscale", script_args=["", 16, 1, 2]).json()  # 1: Lanczos
    assert [decode(im).size for im in body["images"]] == [(160, 160)]
    text = json.loads(body["info"])["infotexts"][0]
    assert "Size: 64x64" in text and "RNG: CPU, SD upscale overlap: 16, SD upscale upscaler: Lanczos, Version: " in text


def test_loopback_over_the_api(server):  # noqa: F811
    """A1111's script_args: loops, final denoising strength, curve, interrogation ("None"): the row grid first,
    then each loop's image; the grid is the API's first image, as A1111's index_of_first_image says."""
    url, _, _ = server
    init = png_b64((20, 160, 90))
    body = post(url, "/sdapi/v1/img2img", prompt="a cat", width=64, height=64, steps=1, seed=3,
                denoising_strength=0.4, init_images=[init],
                script_name="loopback", script_args=[2, 0.6, "Lazy", "None"]).json()
    assert [decode(im).size for im in body["images"]] == [(128, 64), (64, 64), (64, 64)]
    info = json.loads(body["info"])
    assert info["index_of_first_image"] == 1 and info["all_seeds"] == [3, 4]
    assert "Final denoising strength: 0.6, Denoising curve: Lazy" in info["infotexts"][2]
    refused = post(url, "/sdapi/v1/img2img", prompt="a cat", width=64, height=64, steps=1,
                   init_images=[init], script_name="loopback",
                   script_args=[2, 0.6, "Lazy", "DeepBooru"])
    assert refused.status_code == 400 and "interrogating" in refused.json()["detail"]


def test_poor_mans_outpainting_over_the_api(server):  # noqa: F811
    """A1111's script_args: pixels, mask blur, masked content (index), directions: one grown image."""
    url, _, _ = server
    init = png_b64((200, 120, 40))
    body = post(url, "/sdapi/v1/img2img", prompt="a field", width=64, height=64, steps=1, seed=5,
                init_images=[init], script_name="Poor man's outpainting",
                script_args=[32, 4, 1, ["right"]]).json()
    assert [decode(im).size for im in body["images"]] == [(128, 64)]  # 64 + 32, up to a multiple of 64
    info = json.loads(body["info"])
    assert info["all_seeds"] == [5] and "Mask blur: 8" in info["infotexts"][0]
    info_list = requests.get(url + "/sdapi/v1/script-info", timeout=30).json()
    outpaint = next(s for s in info_list if s["name"] == "poor man's outpainting")
    assert [a["label"] for a in outpaint["args"]] == ["Pixels to expand", "Mask blur", "Masked content",
                                                      "Outpainting direction"]


def test_outpainting_mk2_over_the_api(server):  # noqa: F811
    """A1111's script_args: info, pixels, mask blur, directions, fall-off, colour variation: the grown images."""
    url, _, _ = server
    init = png_b64((40, 120, 200))
    body = post(url, "/sdapi/v1/img2img", prompt="a sky", width=64, height=64, steps=1, seed=6,
                init_images=[init], script_name="outpainting mk2",
                script_args=["", 32, 8, ["up"], 1.0, 0.05]).json()
    assert [decode(im).size for im in body["images"]] == [(64, 128)]
    text = json.loads(body["info"])["infotexts"][0]  # blurred 4 x 8 up and down only: A1111 writes no Mask blur
    assert "Seed: 6," in text and "Mask blur" not in text


def test_bad_scripts_and_values_are_4xx(server):  # noqa: F811
    url, _, _ = server
    r = post(url, "/sdapi/v1/txt2img", prompt="a", width=64, height=64, steps=1, script_name="loopback")
    assert r.status_code == 422 and "x/y/z plot" in r.json()["detail"]
    r = post(url, "/sdapi/v1/txt2img", prompt="a", width=64, height=64, steps=1, script_name="x/y/z plot",
             script_args=xyz_args(STEPS, "1, many"))
    assert r.status_code == 400 and "X axis (Steps)" in r.json()["detail"] and "'many'" in r.json()["detail"]
    labels = next(s for s in requests.get(url + "/sdapi/v1/script-info", timeout=30).json()
                  if s["name"] == "x/y/z plot")["args"][0]["choices"]
    r = post(url, "/sdapi/v1/txt2img", prompt="a", width=64, height=64, steps=1, script_name="x/y/z plot",
             script_args=xyz_args(labels.index("Face restore"), "true"))
    assert r.status_code == 400 and "Face restoration" in r.json()["detail"]


def test_grid_infotext_makes_the_plot_again(server):  # noqa: F811
    url, _, _ = server
    first = post(url, "/sdapi/v1/txt2img", prompt="a cat", width=64, height=64, steps=1, seed=-1,
                 script_name="x/y/z plot", script_args=xyz_args(SEED, "-1, -1", lone=False)).json()
    text = json.loads(first["info"])["infotexts"][0]
    assert "Fixed X Values" in text
    again = post(url, "/sdapi/v1/txt2img", infotext=text, width=64, height=64).json()
    assert decode(again["images"][0]).tobytes() == decode(first["images"][0]).tobytes()


def test_prompt_matrix_and_prompts_from_file(server):  # noqa: F811
    url, _, _ = server
    body = post(url, "/sdapi/v1/txt2img", prompt="a cat|red", width=64, height=64, steps=1, seed=3,
                script_name="prompt matrix", script_args=[False, True, "positive", "comma", 0]).json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 3 and info["all_seeds"] == [3, 4]
    body = post(url, "/sdapi/v1/txt2img", prompt="", width=64, height=64, steps=1,
                script_name="prompts from file or textbox",
                script_args=[False, False, "start", "a dog\n--prompt \"a cat\" --steps 2"]).json()
    texts = json.loads(body["info"])["infotexts"]
    assert len(body["images"]) == 2 and [t.split("\n")[0] for t in texts] == ["a dog", "a cat"]


def test_img2img_plot(server):  # noqa: F811
    url, _, _ = server
    init = png_b64((200, 40, 40))
    labels = next(s for s in requests.get(url + "/sdapi/v1/script-info", timeout=30).json()
                  if s["name"] == "x/y/z plot" and s["is_img2img"])["args"][0]["choices"]
    body = post(url, "/sdapi/v1/img2img", init_images=[init], prompt="a cat", width=64, height=64, steps=2,
                script_name="x/y/z plot", script_args=xyz_args(labels.index("Denoising"), "0.3, 0.6")).json()
    texts = json.loads(body["info"])["infotexts"]
    assert len(body["images"]) == 3 and decode(body["images"][0]).width == 128
    assert [t.split("Denoising strength: ")[1].split(",")[0] for t in texts[1:]] == ["0.3", "0.6"]
