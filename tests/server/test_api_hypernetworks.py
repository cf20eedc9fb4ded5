"""Hypernetworks through a live server: A1111's `GET /sdapi/v1/hypernetworks`, the tag in txt2img, the
`sd_hypernetwork` option."""

from __future__ import annotations

import json

import pytest
import requests

from tests.support import hypernetworks as tiny_hn
from tests.support.server import setup_data, start_server, stop_server


@pytest.fixture(scope="module")
def api(tmp_path_factory, tiny_dir):
    data = setup_data(tmp_path_factory.mktemp("hn-server"), tiny_dir)
    folder = data / "models" / "hypernetworks"
    tiny_hn.write(folder, "anime", widths=(32, 64), seed=1)
    tiny_hn.write(folder / "sub", "ink", widths=(32,), seed=2, activation_func="tanh")
    proc, url = start_server(data, "--nowebui")
    yield url + "/sdapi/v1", data
    stop_server(proc)


def txt2img(api: str, **body) -> tuple[str, dict]:
    r = requests.post(api + "/txt2img", json={"width": 64, "height": 64, "steps": 3, "seed": 3, **body}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["images"][0], json.loads(r.json()["info"])


def test_the_list_has_a1111s_shape(api):
    url, data = api
    listed = requests.get(url + "/hypernetworks", timeout=30).json()
    folder = (data / "models" / "hypernetworks").resolve()
    assert listed == [{"name": "anime", "path": str(folder / "anime.pt")},
                      {"name": "ink", "path": str(folder / "sub" / "ink.pt")}]


def test_a_tag_applies_it_and_the_option_appends_it(api):
    url, _ = api
    base, _ = txt2img(url, prompt="a circle")
    tagged, info = txt2img(url, prompt="a circle <hypernet:anime:0.8>")
    assert tagged != base and info["warnings"] == []
    assert info["infotexts"][0].startswith("a circle <hypernet:anime:0.8>\n")
    assert 'Hypernetwork hashes: "anime: ' in info["infotexts"][0]
    assert txt2img(url, prompt="a circle")[0] == base  # taken off exactly
    assert requests.get(url + "/options", timeout=30).json()["sd_hypernetwork"] == "None"
    assert requests.post(url + "/options", json={"sd_hypernetwork": "ink"}, timeout=30).status_code == 200
    try:
        by_option, info = txt2img(url, prompt="a circle")
    finally:
        requests.post(url + "/options", json={"sd_hypernetwork": "None"}, timeout=30)
    assert info["prompt"] == "a circle<hypernet:ink:1.0>" and by_option != base
    assert txt2img(url, prompt="a circle<hypernet:ink:1.0>")[0] == by_option
