"""Hypernetwork files without a model: A1111's format read, the modules built as A1111 builds them, the folder
listed, unsafe files refused, and the prompt/infotext conventions around them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from modules import cmd_args, infotext, paths
from modules.generation import extra_networks
from modules.models import hypernetwork as hn
from modules.models.embeddings import EmbeddingRegistry
from modules.models.lora import LoraRegistry
from tests.support import hypernetworks as tiny_hn


def kinds(seq: torch.nn.Sequential) -> list[str]:
    return [type(m).__name__ for m in seq]


def test_a1111s_dict_is_read(tmp_path):
    path = tiny_hn.write(tmp_path, "anime", widths=(768, 320, 640, 1280, 1024), seed=1, activation_func="swish",
                         is_layer_norm=True)
    data = hn.read(path)
    assert sorted(data.layers) == [320, 640, 768, 1024, 1280]
    assert data.structure == hn.Structure((1, 2, 1), "swish", True, (0.0, 0.0, 0.0), False)
    assert (data.name, data.step, data.sd_checkpoint, data.sd_checkpoint_name) == ("anime", 1000, "abcdef12",
                                                                                 "tiny-sd1")
    k, v = data.layers[768]
    # Linear 0, Hardswish 1, LayerNorm 2, Linear 3 (no activation after it), LayerNorm 4
    assert sorted(k) == [f"linear.{i}.{p}" for i in (0, 2, 3, 4) for p in ("bias", "weight")]
    module = hn.HypernetworkModule(768, data.structure, k)
    assert kinds(module.linear) == ["Linear", "Hardswish", "LayerNorm", "Linear", "LayerNorm"]
    assert not torch.equal(k["linear.0.weight"], v["linear.0.weight"])  # k and v are two modules


def test_defaults_of_a_file_that_says_little():
    sd = tiny_hn.module_state_dict(8, torch.Generator().manual_seed(0), activation_func=None)
    data = hn.parse({8: (sd, dict(sd))})
    # A1111's defaults: [1, 2, 1], no activation, no layer norm, no dropout, activate_output True
    assert data.structure == hn.Structure((1, 2, 1), None, False, (0.0, 0.0, 0.0), True)
    assert (data.name, data.step, data.weight_initialization) == (None, 0, "Normal")


def test_the_first_files_names_are_mapped():
    g = torch.Generator().manual_seed(2)
    old = tiny_hn.module_state_dict(8, g, activation_func=None, old_names=True)
    assert sorted(old) == ["linear1.bias", "linear1.weight", "linear2.bias", "linear2.weight"]
    data = hn.parse({8: (old, old), "layer_structure": [1, 2, 1]})
    assert sorted(data.layers[8][0]) == ["linear.0.bias", "linear.0.weight", "linear.1.bias", "linear.1.weight"]
    module = hn.HypernetworkModule(8, data.structure, data.layers[8][0])
    assert torch.equal(module.linear[1].weight, old["linear2.weight"])


def test_activation_table():
    table = hn.ACTIVATIONS
    assert table["linear"] is torch.nn.Identity and table["swish"] is torch.nn.Hardswish  # A1111's own names
    for name, cls in (("relu", torch.nn.ReLU), ("leakyrelu", torch.nn.LeakyReLU), ("elu", torch.nn.ELU),
                      ("tanh", torch.nn.Tanh), ("sigmoid", torch.nn.Sigmoid), ("gelu", torch.nn.GELU),
                      ("silu", torch.nn.SiLU), ("mish", torch.nn.Mish), ("softplus", torch.nn.Softplus)):
        assert table[name] is cls
    with pytest.raises(TypeError):
        table["relu"] = torch.nn.Tanh  # a constant table
    with pytest.raises(hn.HypernetworkError, match="unsupported activation function 'wiggle'"):
        hn.parse({8: ({}, {}), "activation_func": "wiggle"})


def test_layer_widths_and_order():
    seq = hn.build_layers(10, hn.Structure((1, 2.5, 1), "relu", False, (0, 0, 0), False))
    assert kinds(seq) == ["Linear", "ReLU", "Linear"]  # no activation after the last layer
    assert [(m.in_features, m.out_features) for m in seq if isinstance(m, torch.nn.Linear)] == [(10, 25), (25, 10)]
    seq = hn.build_layers(4, hn.Structure((1, 2, 2, 1), "elu", True, (0, 0.3, 0.3, 0), True))
    assert kinds(seq) == ["Linear", "ELU", "LayerNorm", "Dropout", "Linear", "ELU", "LayerNorm", "Dropout",
                          "Linear", "ELU", "LayerNorm"]
    assert [m.normalized_shape for m in seq if isinstance(m, torch.nn.LayerNorm)] == [(8,), (8,), (4,)]
    assert not seq.training  # dropout off
    assert kinds(hn.build_layers(4, hn.Structure((1, 2, 1), "linear", False, (0, 0, 0), True))) == ["Linear",
                                                                                                    "Linear"]


def test_dropout_structure_of_files_that_predate_it():
    assert hn.dropout_structure([1, 2, 1], False, True) == (0, 0, 0)
    assert hn.dropout_structure([1, 2, 1], True, False) == (0, 0, 0)
    assert hn.dropout_structure([1, 2, 1], True, True) == (0, 0.3, 0)
    assert hn.dropout_structure([1, 2, 2, 1], True, False) == (0, 0.3, 0, 0)
    assert hn.dropout_structure([1, 2, 2, 2, 1], True, True) == (0, 0.3, 0.3, 0.3, 0)
    data = hn.parse(tiny_hn.hypernetwork_dict((8,), layer_structure=(1, 2, 2, 1), use_dropout=True))
    assert data.structure.dropout_structure == (0, 0.3, 0, 0)
    hn.HypernetworkModule(8, data.structure, data.layers[8][0])  # the indices skip the Dropout as A1111's do
    given = hn.parse(tiny_hn.hypernetwork_dict((8,), dropout_structure=(0, 0.1, 0)))
    assert given.structure.dropout_structure == (0, 0.1, 0)


@pytest.mark.parametrize("data, message", [
    ([1, 2], "holds a list"),
    ({"layer_structure": [1, 2, 1]}, "no modules"),
    ({8: ({}, {}), "layer_structure": [2, 1]}, "start and end with 1"),
    ({8: ({},)}, "pair of state dicts"),
    ({8: ({"linear.0.weight": "x"}, {})}, "not a state dict of tensors"),
    ({8: ({}, {}), "dropout_structure": [0, 1.5, 0]}, "one value in \\[0, 1\\)"),
])
def test_what_is_not_a_hypernetwork(data, message):
    with pytest.raises(hn.HypernetworkError, match=message):
        hn.parse(data)


def test_weights_that_do_not_fit_the_structure_are_refused(tmp_path):
    data = tiny_hn.hypernetwork_dict((8,), activation_func="relu")
    data["activation_func"] = None  # the indices now name other layers
    with pytest.raises(hn.HypernetworkError, match="width 8: the weights do not fit"):
        hn.HypernetworkModule(8, hn.parse(data).structure, hn.parse(data).layers[8][0])


def test_a_file_that_asks_for_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    data = tiny_hn.hypernetwork_dict((8,))
    data["name"] = Payload()
    torch.save(data, tmp_path / "evil.pt")
    with pytest.raises(hn.HypernetworkError, match="Refused to load evil.pt.*posix.mkdir"):
        hn.read(tmp_path / "evil.pt")
    assert not marker.exists()
    (tmp_path / "cut.pt").write_bytes((tmp_path / "evil.pt").read_bytes()[:100])
    with pytest.raises(hn.HypernetworkError, match="cut.pt"):
        hn.read(tmp_path / "cut.pt")


def test_registry_lists_pt_files_in_subfolders(tmp_path):
    folder = tmp_path / "hypernetworks"
    tiny_hn.write(folder, "b10", widths=(8,))
    tiny_hn.write(folder, "b9", widths=(8,))
    tiny_hn.write(folder / "sub", "a", widths=(8,))
    tiny_hn.write(folder, "None", widths=(8,))  # A1111 never lists it: it would read as the setting's None
    (folder / "notes.txt").write_text("x")
    (folder / "c.safetensors").write_bytes(b"x")
    reg = hn.HypernetworkRegistry((folder, tmp_path / "missing"))
    assert [i.name for i in reg.list()] == ["a", "b9", "b10"]
    assert reg.find("a").filename == (folder / "sub" / "a.pt").resolve() and reg.find("A") is None
    tiny_hn.write(folder, "late", widths=(8,))
    assert reg.find("late") is None
    reg.refresh()
    assert reg.find("late") is not None
    info = reg.find("b9")
    digest = hashlib.sha256((folder / "b9.pt").read_bytes()).hexdigest()
    assert reg.find_by_hash(digest[:10]) is None  # not hashed yet: finding by hash never reads a file
    assert info.sha256() == digest
    assert reg.find_by_hash(digest[:10]) is info and reg.find_by_hash("") is None
    assert info.shorthash() == info.sha256()[:10] and len(info.sha256()) == 64


def test_cards_name_the_tag():
    reg = hn.HypernetworkRegistry(())
    reg._items = [hn.HypernetworkInfo(Path("/m/hypernetworks/anime.pt"), "anime")]
    cards = extra_networks.cards(LoraRegistry(()), EmbeddingRegistry(()), reg)
    assert [(c.tab, c.name, c.insert(), c.path) for c in cards] == [
        ("Hypernetworks", "anime", "<hypernet:anime:1>", "/m/hypernetworks/anime.pt")]


def test_the_folder_and_its_flag():
    args = cmd_args.parse(["--hypernetwork-dir", "/x/hn"])
    assert paths.from_args("/data", hypernetwork_dir=args.hypernetwork_dir).hypernetwork_dirs == (Path("/x/hn"),)
    assert paths.from_args("/data").hypernetwork_dirs == (Path("/data/models/hypernetworks"),)


def test_the_setting_appends_the_tag_as_a1111_does():
    assert extra_networks.with_hypernetwork("a cat", "anime") == "a cat<hypernet:anime:1.0>"
    assert extra_networks.with_hypernetwork("a cat <hypernet:anime:0.3>", "anime") == "a cat <hypernet:anime:0.3>"
    assert extra_networks.with_hypernetwork("a <hypernet:b:1>", "anime") == "a <hypernet:b:1><hypernet:anime:1.0>"
    assert extra_networks.with_hypernetwork("a cat", "None") == "a cat"
    assert extra_networks.with_hypernetwork("a cat", "") == "a cat"


def test_old_infotext_keys_become_the_tag():
    parsed = infotext.parse_with_defaults("a cat\nSteps: 20, Seed: 1, Hypernet: anime, Hypernet strength: 0.7")
    assert parsed["Prompt"] == "a cat<hypernet:anime:0.7>"
    parsed = infotext.parse_with_defaults("a cat\nSteps: 20, Seed: 1, Sampler: Euler")
    assert parsed["Prompt"] == "a cat"


def test_the_setting_is_a_dropdown_of_the_names_in_the_settings_tab():
    import gradio as gr

    from modules.settings import Settings
    from modules.ui import settings_tab

    assert "sd_hypernetwork" in dict(settings_tab.sections())["Stable Diffusion"]
    with gr.Blocks():
        box = settings_tab.control("sd_hypernetwork", Settings.model_fields["sd_hypernetwork"], "None",
                                   ["None", "anime"])
    assert isinstance(box, gr.Dropdown) and box.value == "None" and [c[0] for c in box.choices] == ["None", "anime"]
