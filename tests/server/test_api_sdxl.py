"""An SDXL checkpoint dropped into the models folder, driven through the live server's A1111 API: it is listed
and loaded without a YAML beside it, renders deterministically with its infotext, an empty negative prompt
differs from a written one; a refiner checkpoint takes over near the end of a job, and a broken one named as the
refiner fails that job with a message while the server stays up and the next job runs on the base."""

from __future__ import annotations

import json

import pytest
import requests
from safetensors.torch import save_file

from tests.support import tiny_models
from tests.support.server import decode, post, start_server, stop_server

pytestmark = pytest.mark.server

SMALL = dict(width=64, height=64, steps=3, sampler_name="Euler a", cfg_scale=5)


@pytest.fixture(scope="module")
def sdxl_server(tmp_path_factory):
    """webui.py --api over a folder with a tiny SDXL base and refiner (with their YAMLs: the shipped ones are full
    size) and a broken refiner (a base U-Net under a refiner's keys, no YAML)."""
    data = tmp_path_factory.mktemp("sdxl-server")
    folder = data / "models" / "Stable-diffusion"
    tiny = tiny_models.build("sdxl", seed=5)
    tiny.write(folder / "xl-base.safetensors")
    refiner = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v.contiguous()
               for k, v in tiny.state_dict().items() if not k.startswith("conditioner.embedders.0.")}
    save_file(refiner, str(folder / "xl-broken-refiner.safetensors"))
    tiny_models.build("sdxl_refiner", seed=6).write(folder / "xl-refiner.safetensors")
    (data / "config.json").write_text(json.dumps({"sd_model_checkpoint": "xl-base.safetensors"}))
    proc, url = start_server(data, "--api")
    yield url, data, proc
    stop_server(proc)


def test_sdxl_checkpoint_renders_through_the_api(sdxl_server):
    url, _, _ = sdxl_server
    names = {m["title"].split(" ")[0] for m in requests.get(url + "/sdapi/v1/sd-models", timeout=30).json()}
    assert {"xl-base.safetensors", "xl-refiner.safetensors", "xl-broken-refiner.safetensors"} <= names

    first = post(url, "/sdapi/v1/txt2img", prompt="a red circle", seed=9, **SMALL)
    assert first.status_code == 200, first.text
    info = json.loads(first.json()["info"])
    assert info["sd_model_name"] == "xl-base" and "Model: xl-base" in info["infotexts"][0]
    again = post(url, "/sdapi/v1/txt2img", prompt="a red circle", seed=9, **SMALL).json()
    negative = post(url, "/sdapi/v1/txt2img", prompt="a red circle", negative_prompt="blue", seed=9, **SMALL).json()
    image = decode(first.json()["images"][0])
    assert image.size == (64, 64)
    assert image.tobytes() == decode(again["images"][0]).tobytes()  # the same request, the same pixels
    # a written negative prompt changes the image (the all-zero empty one is checked in tests/engine/test_sdxl.py)
    assert image.tobytes() != decode(negative["images"][0]).tobytes()


def test_refiner_through_the_api_and_a_broken_one(sdxl_server):
    url, _, proc = sdxl_server
    base = post(url, "/sdapi/v1/txt2img", prompt="a red circle", seed=9, **SMALL).json()
    refined = post(url, "/sdapi/v1/txt2img", prompt="a red circle", seed=9, refiner_checkpoint="xl-refiner",
                   refiner_switch_at=0.5, **SMALL)
    assert refined.status_code == 200, refined.text
    info = json.loads(refined.json()["info"])
    assert "Refiner: xl-refiner [" in info["infotexts"][0] and "Refiner switch at: 0.5" in info["infotexts"][0]
    assert decode(refined.json()["images"][0]).tobytes() != decode(base["images"][0]).tobytes()
    unknown = post(url, "/sdapi/v1/txt2img", prompt="a red circle", refiner_checkpoint="nope", **SMALL)
    assert unknown.status_code == 400 and "refiner_checkpoint: checkpoint 'nope' not found" in unknown.json()["detail"]
    r = post(url, "/sdapi/v1/txt2img", prompt="a red circle", refiner_checkpoint="xl-broken-refiner",
             refiner_switch_at=0.5, **SMALL)
    assert r.status_code in (400, 422), r.text
    assert "refiner_checkpoint" in r.json()["detail"] and "sd_xl_refiner.yaml" in r.json()["detail"]
    assert proc.poll() is None
    assert requests.get(url + "/sdapi/v1/options", timeout=30).json()["sd_model_checkpoint"].startswith("xl-base")
    after = post(url, "/sdapi/v1/txt2img", prompt="a red circle", seed=9, **SMALL)
    assert after.status_code == 200 and json.loads(after.json()["info"])["sd_model_name"] == "xl-base"


def test_a_size_left_out_is_the_sdxl_default(sdxl_server):
    """A request without width/height gets the model family's size (SDXL: 1024x1024; A1111 would use 512);
    one the request or its infotext gives is kept."""
    url, _, _ = sdxl_server
    left_out = post(url, "/sdapi/v1/txt2img", prompt="a red circle", seed=3, steps=1)
    assert left_out.status_code == 200, left_out.text
    info = json.loads(left_out.json()["info"])
    assert (info["width"], info["height"]) == (1024, 1024)
    assert decode(left_out.json()["images"][0]).size == (1024, 1024)
    one_given = json.loads(post(url, "/sdapi/v1/txt2img", prompt="a red circle", steps=1, width=64).json()["info"])
    assert (one_given["width"], one_given["height"]) == (64, 1024)
    pasted = post(url, "/sdapi/v1/txt2img", infotext="a red circle\nSteps: 1, Sampler: Euler, Size: 64x72")
    assert pasted.status_code == 200, pasted.text
    assert decode(pasted.json()["images"][0]).size == (64, 72)
