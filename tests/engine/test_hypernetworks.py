"""Hypernetworks (`<hypernet:NAME:MULT>`, setting `sd_hypernetwork`) on the tiny models.

The files are A1111's format made from a seed (tests/support/hypernetworks.py) and go through the same code a
downloaded file does. The tiny SD 1.x model's text context is 32 wide and its attention layers 32 and 64 wide,
so a file with modules for 32 and 64 reaches every attention layer (cross- and self-attention)."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules import paths
from modules.generation.params import GenerationParams
from modules.models import hypernetwork
from tests.support import hypernetworks as tiny_hn
from tests.support import tiny_models
from tests.support.engine import make_engine


@pytest.fixture(scope="module")
def data(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("hypernetworks")
    shutil.copytree(tiny_dir, d / "models" / "Stable-diffusion")
    folder = d / "models" / "hypernetworks"
    tiny_hn.write(folder, "anime", widths=(32, 64), seed=1)
    tiny_hn.write(folder / "sub", "ink", widths=(32, 64), seed=2, activation_func="tanh", is_layer_norm=True,
                  layer_structure=(1, 1.5, 1), use_dropout=True, last_layer_dropout=True, activate_output=True)
    tiny_hn.write(folder, "old", widths=(32,), seed=3, activation_func=None, old_names=True)
    return d


@pytest.fixture(scope="module")
def engine(data):
    paths.ensure_dirs(paths.from_args(str(data)))
    e = make_engine(data)
    e.load_checkpoint()
    yield e
    e.queue.stop()


@pytest.fixture(scope="module")
def sd1(engine):
    return engine.checkpoints.current


def gen(engine, prompt, **kw):
    base = dict(prompt=prompt, negative_prompt="", width=64, height=64, steps=4, sampler_name="Euler", seed=7,
                save_images=False)
    return engine.txt2img(GenerationParams(**{**base, **kw}))


def image_bytes(result) -> bytes:
    return result.images[0].tobytes()


def folder(engine):
    return engine.paths.hypernetwork_dirs[0]


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.unet.state_dict().items()}


def test_one_module_is_x_plus_f_of_x_times_the_multiplier():
    """relu [1, 2, 1]: x + (W2 relu(W1 x + b1) + b2) * m, computed here by hand on a small tensor."""
    sd = tiny_hn.module_state_dict(4, torch.Generator().manual_seed(5), activation_func="relu")
    module = hypernetwork.HypernetworkModule(4, hypernetwork.Structure((1, 2, 1), "relu", activate_output=False), sd)
    x = torch.tensor([[[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, -2.0]]])
    w1, b1 = sd["linear.0.weight"], sd["linear.0.bias"]
    w2, b2 = sd["linear.2.weight"], sd["linear.2.bias"]  # linear.1 is the ReLU
    for m in (1.0, 0.3):
        want = torch.empty_like(x)
        for i in range(2):
            hidden = [max(0.0, sum(float(w1[j, k]) * float(x[0, i, k]) for k in range(4)) + float(b1[j]))
                      for j in range(8)]
            for o in range(4):
                f = sum(float(w2[o, j]) * hidden[j] for j in range(8)) + float(b2[o])
                want[0, i, o] = float(x[0, i, o]) + f * m
        assert torch.allclose(module(x, m), want, atol=1e-5)
    assert torch.equal(module(x, 0.0), x)
    # activate_output (A1111's default for a file that does not say): the ReLU after the last layer too
    out = hypernetwork.HypernetworkModule(4, hypernetwork.Structure((1, 2, 1), "relu", activate_output=True), sd)
    assert torch.allclose(out(x, 1.0), x + torch.relu(torch.relu(x @ w1.T + b1) @ w2.T + b2), atol=1e-6)


def test_it_runs_on_the_context_before_to_k_and_to_v(engine, sd1):
    gen(engine, "x <hypernet:anime:0.7>")
    (net, mult), = sd1.hypernets.active
    assert mult == 0.7 and set(net.layers) == {32, 64}
    attn2 = sd1.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2  # cross-attention: context 32 wide
    attn1 = sd1.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1  # self-attention: 64 wide
    for attn, width in ((attn2, 32), (attn1, 64)):
        seen = {}
        handles = [layer.register_forward_hook(lambda _m, args, _o, key=key: seen.__setitem__(key, args[0]))
                   for key, layer in (("k", attn.to_k), ("v", attn.to_v))]
        x = torch.randn(2, 5, width, generator=torch.Generator().manual_seed(1))
        try:
            attn.to_k(x), attn.to_v(x)
        finally:
            for h in handles:
                h.remove()
        k_module, v_module = net.layers[width]
        assert torch.equal(seen["k"], k_module(x, 0.7)) and torch.equal(seen["v"], v_module(x, 0.7))
        assert not torch.equal(seen["k"], seen["v"])  # two modules: one for the keys, one for the values
    gen(engine, "x")
    assert sd1.hypernets.hooked == 0


def test_a_hypernetwork_changes_the_image_and_removing_it_restores_it(engine, sd1):
    before = snapshot(sd1)
    base = gen(engine, "a red circle")
    tagged = gen(engine, "a red circle <hypernet:anime:1>")
    assert image_bytes(tagged) != image_bytes(base) and tagged.warnings == []
    assert tagged.infotexts[0].startswith("a red circle <hypernet:anime:1>\n")  # the tag stays in the prompt
    digest = hashlib.sha256((folder(engine) / "anime.pt").read_bytes()).hexdigest()[:10]
    assert f'Hypernetwork hashes: "anime: {digest}"' in tagged.infotexts[0]
    assert "Hypernetwork hashes" not in base.infotexts[0]
    assert image_bytes(gen(engine, "a red circle <hypernet:anime>")) == image_bytes(tagged)  # default 1.0
    ignored = gen(engine, "a red circle <hypernet:anime:1>", disable_extra_networks=True)
    assert image_bytes(ignored) == image_bytes(base)
    after = gen(engine, "a red circle")
    assert image_bytes(after) == image_bytes(base) and sd1.hypernets.hooked == 0
    assert all(torch.equal(before[k], v) for k, v in sd1.unet.state_dict().items())  # weights never touched


def test_multiplier_zero_equals_none_and_the_multiplier_scales(engine):
    base = gen(engine, "a red circle")
    assert image_bytes(gen(engine, "a red circle <hypernet:anime:0>")) == image_bytes(base)
    half, full = gen(engine, "a red circle <hypernet:anime:0.5>"), gen(engine, "a red circle <hypernet:anime:1>")
    p = [np.asarray(r.images[0], dtype=np.int16) for r in (base, half, full)]
    assert 0 < np.abs(p[1] - p[0]).mean() < np.abs(p[2] - p[0]).mean()


def test_two_hypernetworks_are_chained_in_order(engine, sd1):
    base = gen(engine, "a red circle")
    anime = gen(engine, "a red circle <hypernet:anime:1>")
    ink = gen(engine, "a red circle <hypernet:ink:0.8>")
    both = gen(engine, "a red circle <hypernet:anime:1> <hypernet:ink:0.8>")
    assert len({image_bytes(r) for r in (base, anime, ink, both)}) == 4 and both.warnings == []
    assert [(n.name, m) for n, m in sd1.hypernets.active] == [("anime", 1.0), ("ink", 0.8)]
    assert "Hypernetwork hashes: \"anime: " in both.infotexts[0] and ", ink: " in both.infotexts[0]
    to_k = sd1.unet.mid_block.attentions[0].transformer_blocks[0].attn1.to_k
    x = torch.randn(1, 4, 64, generator=torch.Generator().manual_seed(2))
    seen = []
    handle = to_k.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    try:
        to_k(x)
    finally:
        handle.remove()
    (a, _), (b, _) = sd1.hypernets.active
    assert torch.equal(seen[0], b.layers[64][0](a.layers[64][0](x, 1.0), 0.8))
    assert image_bytes(gen(engine, "a red circle")) == image_bytes(base)


def test_the_first_files_names_and_widths_that_match_nothing(engine, data):
    base = gen(engine, "a red circle")
    old = gen(engine, "a red circle <hypernet:old:1>")  # linear1/linear2, 32 wide only: cross-attention
    assert image_bytes(old) != image_bytes(base) and old.warnings == []
    tiny_hn.write(folder(engine), "sd15", widths=(768, 320, 640, 1280), seed=4)  # SD 1.5's widths: none here
    wide = gen(engine, "a red circle <hypernet:sd15:1>")
    assert image_bytes(wide) == image_bytes(base) and wide.warnings == []


def test_unknown_names_and_unusable_files_are_warnings(engine, tmp_path):
    class Payload:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    torch.save({320: ({}, {}), "name": Payload()}, folder(engine) / "evil.pt")
    (folder(engine) / "broken.pt").write_bytes(b"not a pickle")
    base = gen(engine, "a red circle")
    result = gen(engine, "a red circle <hypernet:evil:1> <hypernet:missing:1> <hypernet:broken:1> "
                         "<hypernet:anime:x>")
    assert image_bytes(result) == image_bytes(base)
    assert len(result.warnings) == 4
    assert "Hypernetwork 'evil' was not applied" in result.warnings[0] and "Refused" in result.warnings[0]
    assert "builtins.eval" in result.warnings[0]
    assert "Hypernetwork not found: 'missing'" in result.warnings[1]
    assert "Hypernetwork 'broken' was not applied" in result.warnings[2]
    assert "multiplier must be a number" in result.warnings[3]
    assert "Hypernetwork hashes" not in result.infotexts[0]


def test_the_setting_appends_its_hypernetwork_to_the_prompt(engine):
    tagged = gen(engine, "a red circle<hypernet:anime:1.0>")
    engine.options.update({"sd_hypernetwork": "anime"})
    try:
        by_setting = gen(engine, "a red circle")
        named = gen(engine, "a red circle <hypernet:anime:0.5>")  # already named: not added again
        off = gen(engine, "a red circle", disable_extra_networks=True)
    finally:
        engine.options.update({"sd_hypernetwork": "None"})
    assert by_setting.infotexts[0].startswith("a red circle<hypernet:anime:1.0>\n")  # A1111: no space, 1.0
    assert image_bytes(by_setting) == image_bytes(tagged)
    assert named.infotexts[0].startswith("a red circle <hypernet:anime:0.5>\n")
    assert off.infotexts[0].startswith("a red circle\n")
    overridden = gen(engine, "a red circle", override_settings={"sd_hypernetwork": "anime"})
    assert image_bytes(overridden) == image_bytes(tagged)


def test_pasted_infotexts_find_the_file_by_hash_and_read_the_old_keys(engine):
    gen(engine, "x <hypernet:anime:1>")  # hashed once used (kept in cache.json)
    digest = hashlib.sha256((folder(engine) / "anime.pt").read_bytes()).hexdigest()[:10]
    text = ("a cat <hypernet:theirs:0.6>\nSteps: 4, Sampler: Euler, Seed: 7, "
            f'Hypernetwork hashes: "theirs: {digest}"')
    assert engine.paste.read(text, True).values["prompt"] == "a cat <hypernet:anime:0.6>"
    old = "a cat\nSteps: 4, Sampler: Euler, Seed: 7, Hypernet: anime, Hypernet strength: 0.6"
    assert engine.paste.read(old, True).values["prompt"] == "a cat<hypernet:anime:0.6>"
    no_strength = engine.paste.read("a cat\nSteps: 4, Seed: 7, Hypernet: anime", True)
    assert no_strength.values["prompt"] == "a cat<hypernet:anime:1.0>"


def test_it_composes_with_lora(engine, sd1):
    g = torch.Generator().manual_seed(9)
    network = {}
    for name, m in sd1.unet.named_modules():
        if isinstance(m, torch.nn.Linear) and name.endswith("attn2.to_q"):
            key = "lora_unet_" + name.replace(".", "_")
            network[f"{key}.lora_down.weight"] = torch.randn(2, m.in_features, generator=g) * 0.5
            network[f"{key}.lora_up.weight"] = torch.randn(m.out_features, 2, generator=g) * 0.5
    lora_dir = engine.paths.lora_dirs[0]
    lora_dir.mkdir(parents=True, exist_ok=True)
    save_file(network, str(lora_dir / "q.safetensors"))
    engine.networks.refresh_loras()
    base, lora = gen(engine, "a red circle"), gen(engine, "a red circle <lora:q:1>")
    hyper = gen(engine, "a red circle <hypernet:anime:1>")
    both = gen(engine, "a red circle <lora:q:1> <hypernet:anime:1>")
    assert len({image_bytes(r) for r in (base, lora, hyper, both)}) == 4 and both.warnings == []
    assert "Lora hashes" in both.infotexts[0] and "Hypernetwork hashes" in both.infotexts[0]
    assert image_bytes(gen(engine, "a red circle")) == image_bytes(base)


def test_low_memory_mode(data):
    """Weights resting in 16 bits, layers computing in 32: the modules compute in the compute type, and coming
    off gives the low-memory image back exactly."""
    e = make_engine(data, checkpoint="sd1-fp16.safetensors")
    try:
        kw = dict(override_settings={"low_memory": "On"})
        base = gen(e, "a red circle", **kw)
        model = e.checkpoints.current
        assert model.low_memory
        tagged = gen(e, "a red circle <hypernet:anime:1>", **kw)
        (net, _), = model.hypernets.active
        assert {p.dtype for p in net.layers[32][0].parameters()} == {torch.float32}
        assert image_bytes(tagged) != image_bytes(base) and tagged.warnings == []
        assert image_bytes(gen(e, "a red circle", **kw)) == image_bytes(base)
    finally:
        e.queue.stop()


def test_sdxl_cross_attention_is_matched_by_its_own_width(tmp_path, tiny_dir):
    """The tiny SDXL's context is 96 wide (an SD 1.5 file's 768 matches nothing there, as in A1111); a module
    for 96 changes its cross-attention."""
    models = tmp_path / "models"
    tiny_models.build("sdxl", seed=3).write(models / "Stable-diffusion" / "sdxl.safetensors")
    tiny_hn.write(models / "hypernetworks", "sd15", widths=(768, 320, 640, 1280), seed=4)
    tiny_hn.write(models / "hypernetworks", "xl", widths=(96,), seed=5)
    e = make_engine(tmp_path, checkpoint="sdxl.safetensors")
    try:
        base = gen(e, "a red circle")
        assert image_bytes(gen(e, "a red circle <hypernet:sd15:1>")) == image_bytes(base)
        xl = gen(e, "a red circle <hypernet:xl:1>")
        assert image_bytes(xl) != image_bytes(base) and xl.warnings == []
        assert image_bytes(gen(e, "a red circle")) == image_bytes(base)
    finally:
        e.queue.stop()


def test_the_extra_networks_refresh_lists_new_files_as_cards(engine):
    from modules.ui import extra_networks as panel

    tiny_hn.write(folder(engine), "fresh", widths=(32,), seed=6)
    assert "fresh" not in [c.name for c in engine.networks.cards()]  # as the folder was last read
    cards = panel.listing(engine)["Hypernetworks"]  # the panel's Refresh button
    assert ("fresh", "<hypernet:fresh:1>") in [(c.name, c.insert()) for c in cards]
    assert {"anime", "ink", "old"} <= {c.name for c in cards}
    assert engine.networks.find_hypernetwork("fresh").filename == (folder(engine) / "fresh.pt").resolve()
