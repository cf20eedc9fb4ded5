"""LoRA/LyCORIS networks, textual-inversion embeddings and styles on the tiny models.

Network and embedding files are made here from a seed, in the layouts real files use (kohya-ss/A1111,
diffusers/PEFT, A1111's `.pt` embeddings, diffusers' `.bin`), and go through the same code a
downloaded file does.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modules import paths, styles
from modules.generation.params import GenerationParams
from modules.models import lora
from modules.models.checkpoint_file import CheckpointError
from modules.models.embeddings import EmbeddingVocabulary, read_embedding
from tests.support.engine import make_engine, make_manager

RANK = 4


def _flat(name: str) -> str:
    return name.replace(".", "_")


def layers(model) -> dict[str, dict[str, torch.nn.Module]]:
    """The Linear/Conv2d layers a LoRA may change, by our module path."""
    out = {"unet": {}, "te": {}}
    for part, module in (("unet", model.unet), ("te", model.text.text_model)):
        for name, m in module.named_modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                out[part][name] = m
    return out


def factors(weight: torch.Tensor, g: torch.Generator, rank: int = RANK) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (down, up) for a layer: linear (r, in)/(out, r); conv (r, in, kh, kw)/(out, r, 1, 1)."""
    out_ch, in_ch = weight.shape[:2]
    if weight.dim() == 4:
        return (torch.randn(rank, in_ch, *weight.shape[2:], generator=g) * 0.3,
                torch.randn(out_ch, rank, 1, 1, generator=g) * 0.3)
    return torch.randn(rank, in_ch, generator=g) * 0.3, torch.randn(out_ch, rank, generator=g) * 0.3


def kohya_lora(model, seed: int = 0, alpha: float = 2.0, which=("unet", "te"), convs: bool = True) -> dict:
    """A kohya-ss layout LoRA over every attention/MLP layer (and resnet convs: LoCon) of the model."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for part in which:
        for name, m in layers(model)[part].items():
            if part == "unet" and not (("attn" in name or "ff." in name or "proj_" in name)
                                       or (convs and "resnets" in name and "conv" in name)):
                continue
            if part == "te" and ("self_attn" not in name and "mlp" not in name):
                continue
            down, up = factors(m.weight, g)
            key = "lora_unet_" + _flat(name) if part == "unet" else "lora_te_text_model_" + _flat(
                name.removeprefix("text_model."))  # kohya's names for the text encoder
            sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
            sd[f"{key}.alpha"] = torch.tensor(alpha)
    return sd


def expected_delta(m: torch.nn.Module, down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    return (up.flatten(1) @ down.flatten(1)).reshape(m.weight.shape) * scale


def snapshot(model) -> dict[str, torch.Tensor]:
    return {**{f"unet.{k}": v.clone() for k, v in model.unet.state_dict().items()},
            **{f"te.{k}": v.clone() for k, v in model.text.text_model.state_dict().items()}}


def same_weights(model, snap) -> bool:
    return all(torch.equal(snap[k], v) for k, v in snapshot(model).items())


@pytest.fixture(scope="module")
def data(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("extra-networks")
    shutil.copytree(tiny_dir, d / "models" / "Stable-diffusion")
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


def write_lora(engine, name: str, sd: dict, metadata: dict | None = None) -> Path:
    path = engine.paths.lora_dirs[0] / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    engine.networks.refresh_loras()
    return path


# --- key layouts --------------------------------------------------------------------------------

def test_every_layout_names_the_same_layers(sd1):
    index = lora.module_index(sd1.unet, sd1.text.text_model)
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    out = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0"
    te = next(n for n in layers(sd1)["te"] if n.endswith("encoder.layers.1.self_attn.q_proj"))
    conv = "down_blocks.1.resnets.0.conv1"
    d, u = torch.zeros(2, 3), torch.zeros(3, 2)
    cases = {
        # kohya-ss, diffusers module names
        f"lora_unet_{_flat(q)}.lora_down.weight": ("unet", q, "down"),
        f"lora_unet_{_flat(out)}.lora_up.weight": ("unet", out, "up"),
        "lora_te_text_model_encoder_layers_1_self_attn_q_proj.alpha": ("te", te, "alpha"),
        # kohya-ss with the original LDM names (input_blocks.1.1 is down_blocks.0.attentions.0)
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight": ("unet", q, "down"),
        "lora_unet_input_blocks_3_0_in_layers_2.lora_down.weight": ("unet", conv, "down"),  # 1 layer per block
        # PEFT / current diffusers
        f"unet.{q}.lora_A.weight": ("unet", q, "down"),
        "text_encoder.text_model.encoder.layers.1.self_attn.q_proj.lora_B.weight": ("te", te, "up"),
        # older diffusers
        f"unet.{q}.lora.down.weight": ("unet", q, "down"),
        "text_encoder.encoder.layers.1.self_attn.q_proj.lora_linear_layer.up.weight": ("te", te, "up"),
        f"unet.{out.removesuffix('.0')[:-7]}.processor.to_out_lora.up.weight": ("unet", out, "up"),
    }
    for key, (part, module, slot) in cases.items():
        network = lora.read_network({key: d if slot == "down" else u}, index, "x")
        assert [(c.part, c.module, list(c.tensors)) for c in network.changes] == [(part, module, [slot])], key
    # PEFT alpha from diffusers' metadata: lora_alpha, alpha_pattern, rsLoRA
    meta = {"lora_adapter_metadata": '{"unet.lora_alpha": 8, "unet.r": 2, "unet.alpha_pattern": {"attn1.to_q": 1},'
                                     ' "text_encoder.lora_alpha": 4, "text_encoder.use_rslora": true}'}
    sd = {f"unet.{out}.lora_A.weight": d, f"unet.{q}.lora_A.weight": d,
          "text_encoder.text_model.encoder.layers.1.self_attn.q_proj.lora_A.weight": d}
    alphas = {c.module: c.tensors["alpha"].item() for c in lora.read_network(sd, index, "x", meta).changes}
    assert alphas == {out: 8.0, q: 1.0, te: pytest.approx(4 * 2 ** 0.5)}
    strays = lora.read_network({"lora_unet_no_such_layer.lora_down.weight": d, "lora_unet_a.dora_scale": d}, index, "x")
    assert strays.changes == [] and strays.unmatched == ["lora_unet_no_such_layer"]
    assert strays.unsupported == ["dora_scale"]


def test_kohya_names_resolve_as_diffusers_own_converter_resolves_them(sd1):
    """diffusers turns a kohya-ss file into its (older) diffusers names; both must change the same layers."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_lora_to_diffusers

    index = lora.module_index(sd1.unet, sd1.text.text_model)
    kohya = {k: v for k, v in kohya_lora(sd1, convs=False).items()}
    converted, _alphas = _convert_non_diffusers_lora_to_diffusers(dict(kohya))
    ours, theirs = lora.read_network(kohya, index, "k"), lora.read_network(converted, index, "d")
    assert ours.unmatched == theirs.unmatched == [] and len(ours.changes) > 60
    assert sorted((c.part, c.module) for c in ours.changes) == sorted((c.part, c.module) for c in theirs.changes)


def test_sd2_text_encoder_and_linear_projections_are_found(data):
    """SD 2.x: the OpenCLIP text tower is loaded as a transformers CLIP model, so kohya's names for it match."""
    manager = make_manager(data)
    sd2 = manager.get(manager.checkpoints.find("sd2-v.safetensors"))
    network = lora.read_network(kohya_lora(sd2, convs=False), lora.module_index(sd2.unet, sd2.text.text_model), "x")
    assert network.unmatched == [] and {c.part for c in network.changes} == {"unet", "te"}
    assert any(c.module.endswith("proj_in") for c in network.changes)  # Linear here, Conv2d 1x1 in SD 1.x


def test_factor_kinds_give_the_documented_change(sd1):
    g = torch.Generator().manual_seed(3)
    linear = torch.Size([64, 32])
    down, up = torch.randn(4, 32, generator=g), torch.randn(64, 4, generator=g)
    change = lora.LayerChange("unet", "m", {"down": down, "up": up, "alpha": torch.tensor(2.0)})
    assert torch.allclose(change.delta(linear, torch.device("cpu"))[0], up @ down * 0.5)
    assert torch.allclose(lora.LayerChange("unet", "m", {"down": down, "up": up}).delta(linear, "cpu")[0], up @ down)
    # LoHa: Hadamard product of two low-rank products
    a1, b1, a2, b2 = (torch.randn(s, generator=g) for s in ((64, 2), (2, 32), (64, 2), (2, 32)))
    loha = lora.LayerChange("unet", "m", {"hada_w1_a": a1, "hada_w1_b": b1, "hada_w2_a": a2, "hada_w2_b": b2,
                                          "alpha": torch.tensor(1.0)})
    assert torch.allclose(loha.delta(linear, "cpu")[0], (a1 @ b1) * (a2 @ b2) * 0.5)
    index = lora.module_index(sd1.unet, sd1.text.text_model)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    read = lora.read_network({f"{key}.hada_w1_a": a1, f"{key}.hada_w1_b": b1, f"{key}.hada_w2_a": a2,
                              f"{key}.hada_w2_b": b2, f"{key}.alpha": torch.tensor(1.0)}, index, "loha")
    assert [sorted(c.tensors) for c in read.changes] == [["alpha", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"]]
    # LoKr: Kronecker product
    w1, w2 = torch.randn(8, 4, generator=g), torch.randn(8, 8, generator=g)
    lokr = lora.LayerChange("unet", "m", {"lokr_w1": w1, "lokr_w2": w2})
    assert torch.allclose(lokr.delta(linear, "cpu")[0], torch.kron(w1, w2))
    # a full difference
    diff = torch.randn(64, 32, generator=g)
    assert torch.equal(lora.LayerChange("unet", "m", {"diff": diff}).delta(linear, "cpu")[0], diff)
    with pytest.raises(lora.NetworkError, match="does not fit"):
        change.delta(torch.Size([10, 10]), "cpu")


def test_locon_conv_change_is_the_composed_convolutions(sd1):
    """A merged 3x3 LoCon layer computes conv(x) + scale * up(down(x)) exactly as the unmerged pair."""
    conv = sd1.unet.get_submodule("down_blocks.1.resnets.0.conv1")
    g = torch.Generator().manual_seed(5)
    down = torch.randn(RANK, conv.in_channels, 3, 3, generator=g)
    up = torch.randn(conv.out_channels, RANK, 1, 1, generator=g)
    x = torch.randn(1, conv.in_channels, 8, 8, generator=g)
    delta, _ = lora.LayerChange("unet", "", {"down": down, "up": up, "alpha": torch.tensor(2.0)}).delta(
        conv.weight.shape, torch.device("cpu"))
    branch = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, down, padding=1), up)
    merged = torch.nn.functional.conv2d(x, conv.weight + delta, conv.bias, padding=1)
    assert torch.allclose(merged, conv(x) + branch * 0.5, atol=1e-4)
    # with a Tucker core (LyCORIS LoCon "cp"): 1x1 down, 3x3 mid, 1x1 up
    down1, mid = torch.randn(RANK, conv.in_channels, 1, 1, generator=g), torch.randn(RANK, RANK, 3, 3, generator=g)
    delta, _ = lora.LayerChange("unet", "", {"down": down1, "mid": mid, "up": up}).delta(conv.weight.shape, "cpu")
    branch = torch.nn.functional.conv2d(torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, down1), mid,
                                                                   padding=1), up)
    assert torch.allclose(torch.nn.functional.conv2d(x, delta, padding=1), branch, atol=1e-4)


# --- applying through the engine ----------------------------------------------------------------

def test_lora_changes_the_image_and_removing_it_restores_weights_and_pixels(engine, sd1):
    before = snapshot(sd1)
    base = gen(engine, "a red circle")
    sd = kohya_lora(sd1, seed=1)
    write_lora(engine, "tiny-style", sd)
    with_lora = gen(engine, "a red circle <lora:tiny-style:0.8>")
    assert with_lora.images[0].tobytes() != base.images[0].tobytes()
    assert with_lora.warnings == []
    # the merged weight is base + 0.8 * alpha/rank * up @ down
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    key = f"lora_unet_{_flat(name)}"
    m = sd1.unet.get_submodule(name)
    want = before[f"unet.{name}.weight"] + 0.8 * expected_delta(m, sd[f"{key}.lora_down.weight"],
                                                                 sd[f"{key}.lora_up.weight"], 2.0 / RANK)
    assert torch.allclose(m.weight, want, atol=1e-6)
    again = gen(engine, "a red circle <lora:tiny-style:0.8>")  # still applied: nothing redone
    assert again.images[0].tobytes() == with_lora.images[0].tobytes()
    ignored = gen(engine, "a red circle <lora:tiny-style:0.8>", disable_extra_networks=True)
    assert ignored.images[0].tobytes() == base.images[0].tobytes() and ignored.warnings == []
    assert gen(engine, "a red circle <lora:tiny-style:0.8>").images[0].tobytes() == with_lora.images[0].tobytes()
    after = gen(engine, "a red circle")
    assert same_weights(sd1, before)  # bit-identical, every parameter
    assert after.images[0].tobytes() == base.images[0].tobytes()
    assert sd1.networks.touched == 0


def test_text_encoder_and_unet_multipliers(engine, sd1):
    before = snapshot(sd1)
    write_lora(engine, "both", kohya_lora(sd1, seed=2))
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    te = next(n for n in layers(sd1)["te"] if n.endswith("encoder.layers.0.self_attn.q_proj")) + ".weight"

    def changed() -> tuple[bool, bool]:
        now = snapshot(sd1)
        return (not torch.equal(now[f"te.{te}"], before[f"te.{te}"]),
                not torch.equal(now[f"unet.{q}"], before[f"unet.{q}"]))

    gen(engine, "x <lora:both:1:0>")  # A1111: first number text encoder, second U-Net
    assert changed() == (True, False)
    gen(engine, "x <lora:both:0:1>")
    assert changed() == (False, True)
    gen(engine, "x <lora:both:te=0:unet=0.5>")
    assert changed() == (False, True)
    gen(engine, "x")
    assert same_weights(sd1, before)


def test_several_loras_add_up_and_unknown_names_warn(engine, sd1):
    before = snapshot(sd1)
    a, b = kohya_lora(sd1, seed=3, which=("unet",), convs=False), kohya_lora(sd1, seed=4, which=("unet",), convs=False)
    write_lora(engine, "a", a)
    write_lora(engine, "b", b)
    result = gen(engine, "x <lora:a:0.5> <lora:b:1.5> <lora:missing:1>")
    name = "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2"
    key, m = f"lora_unet_{_flat(name)}", sd1.unet.get_submodule(name)
    want = before[f"unet.{name}.weight"]
    for sd, mult in ((a, 0.5), (b, 1.5)):
        want = want + mult * expected_delta(m, sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"], 2.0 / RANK)
    assert torch.allclose(m.weight, want, atol=1e-6)
    assert len(result.warnings) == 1 and "LoRA not found: 'missing'" in result.warnings[0]
    assert result.info["warnings"] == result.warnings
    text = result.infotexts[0]
    assert f'Lora hashes: "a: {lora.addnet_hash(engine.paths.lora_dirs[0] / "a.safetensors")[:12]}, b: ' in text
    off = gen(engine, "x <lora:a:0.5>", override_settings={"lora_add_hashes_to_infotext": False})
    assert "Lora hashes" not in off.infotexts[0]  # A1111's setting of that name
    gen(engine, "x")
    assert same_weights(sd1, before)


def test_lora_hash_is_a1111s_addnet_hash(engine, sd1):
    path = write_lora(engine, "hashed", kohya_lora(sd1, seed=5, which=("te",)), metadata={"ss_output_name": "nice"})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    want = hashlib.sha256(raw[8 + n:]).hexdigest()[:12]
    result = gen(engine, "x <lora:hashed:1>")
    assert f"Lora hashes: \"hashed: {want}\"" in result.infotexts[0]  # quoted: the value holds a colon
    cache = engine.paths.hash_cache.read_text()  # kept across restarts, keyed apart from the file's sha256
    assert f"{path.resolve()}#addnet" in cache and want in cache
    info = engine.networks.find_lora("nice")  # the alias from kohya's metadata finds it too
    assert info is not None and info.name == "hashed" and info.alias == "nice"
    assert info.preview is None
    path.with_suffix(".preview.png").write_bytes(b"png")
    assert info.preview == path.with_suffix(".preview.png")  # what a card shows


def test_pasted_lora_names_follow_their_hashes(engine, sd1):
    path = write_lora(engine, "mine", kohya_lora(sd1, seed=8, which=("te",)))
    networks = engine.networks
    short = lora.addnet_hash(path)[:12]
    prompt = "x <lora:theirs:0.5> <lora:other:1>"
    assert networks.rename_by_hash(prompt, f"theirs: {short}") == prompt  # hash not known yet: no file is read
    assert networks.lora_short_hash("mine") == short  # known once used (and then kept in cache.json)
    assert networks.rename_by_hash(prompt, f"theirs: {short}, other: 0123456789ab") == (
        "x <lora:mine:0.5> <lora:other:1>")
    assert networks.rename_by_hash("<lora:mine:1>", f"mine: {short}") == "<lora:mine:1>"
    assert networks.rename_by_hash(prompt, None) == prompt


def test_peft_layout_equals_kohya_layout(engine, sd1):
    """The same factors saved in diffusers/PEFT naming give the same image as kohya's naming."""
    sd = kohya_lora(sd1, seed=6, convs=False)
    peft = {}
    for key, value in sd.items():
        module, part = key.split(".", 1)
        prefix = "unet" if module.startswith("lora_unet_") else "text_encoder"
        flat = module.removeprefix("lora_unet_").removeprefix("lora_te_text_model_")
        real = next(n for n in layers(sd1)["unet" if prefix == "unet" else "te"]
                    if _flat(n.removeprefix("text_model.")) == flat)
        if part == "alpha":
            continue  # PEFT files carry no alpha: scale 1, so fold alpha/rank into B
        slot = "lora_A" if part == "lora_down.weight" else "lora_B"
        peft[f"{prefix}.{real}.{slot}.weight"] = value * (2.0 / RANK if slot == "lora_B" else 1.0)
    write_lora(engine, "kohya", sd)
    write_lora(engine, "peft", peft)
    k = gen(engine, "a red circle <lora:kohya:1>")
    p = gen(engine, "a red circle <lora:peft:1>")
    diff = (torch.tensor(list(k.images[0].tobytes())) - torch.tensor(list(p.images[0].tobytes()))).abs().max()
    assert diff <= 1  # float rounding of a differently ordered product
    gen(engine, "a red circle")


def test_half_precision_weights_are_merged_in_fp32_and_restored_exactly(sd1):
    import copy

    unet, te = copy.deepcopy(sd1.unet).half(), copy.deepcopy(sd1.text.text_model).half()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    sd = kohya_lora(sd1, seed=9)
    patcher = lora.WeightPatcher(unet, te)
    info = lora.LoraInfo(Path("in-memory.safetensors"), "mem")
    assert patcher.apply([lora.Activation(info, 1.0, 0.5, "mem")], read=lambda _path: sd) == []
    name = "down_blocks.1.resnets.0.conv1"  # a LoCon conv layer
    key, m = f"lora_unet_{_flat(name)}", unet.get_submodule(name)
    want = before[f"{name}.weight"].float() + 0.5 * expected_delta(
        m, sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"], 2.0 / RANK)
    assert m.weight.dtype == torch.float16 and torch.allclose(m.weight.float(), want, rtol=1e-3, atol=1e-4)
    patcher.restore()
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())


def test_apply_and_restore_are_fast(engine, sd1):
    sd = kohya_lora(sd1, seed=7)
    write_lora(engine, "timed", sd)
    patcher = sd1.networks
    start = time.perf_counter()
    patcher.apply([lora.Activation(engine.networks.find_lora("timed"), 1.0, 1.0, "timed")])
    applied = time.perf_counter() - start
    assert patcher.touched == len([k for k in sd if k.endswith("lora_down.weight")])
    start = time.perf_counter()
    patcher.restore()
    restored = time.perf_counter() - start
    assert patcher.touched == 0
    print(f"tiny model: {len(sd) // 3} layers, apply {applied * 1000:.1f} ms, restore {restored * 1000:.1f} ms")


# --- textual inversion --------------------------------------------------------------------------

def token_vectors(model, words: str) -> torch.Tensor:
    ids = model.text.tokenize(words)
    return model.text.text_model.get_input_embeddings().weight[ids].detach().clone()


def test_embedding_formats(tmp_path, sd1):
    vectors = token_vectors(sd1, "red circle")
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "a1111",
                "step": 500, "sd_checkpoint": "abc", "sd_checkpoint_name": "model"}, tmp_path / "a1111.pt")
    torch.save({"<diffusers>": vectors[0]}, tmp_path / "diffusers.bin")
    torch.save({"string_to_token": {"*": 265}, "string_to_param": torch.nn.ParameterDict({"*": vectors})},
               tmp_path / "ldm.pt")  # the original textual-inversion code's layout
    save_file({"emb_params": vectors.contiguous()}, str(tmp_path / "st.safetensors"))
    a = read_embedding(tmp_path / "a1111.pt")
    assert a.name == "a1111" and a.count == 2 and a.step == 500 and a.sd_checkpoint_name == "model"
    assert torch.equal(a.vectors, vectors)
    d = read_embedding(tmp_path / "diffusers.bin")
    assert d.count == 1 and torch.equal(d.vectors[0], vectors[0])
    assert torch.equal(read_embedding(tmp_path / "st.safetensors").vectors, vectors)
    assert torch.equal(read_embedding(tmp_path / "ldm.pt").vectors, vectors)
    # a pickle that would run code is refused, and reported as a skipped embedding, not an error
    import os
    torch.save({"string_to_param": {"*": vectors}, "x": os.getcwd}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="Refused"):
        read_embedding(tmp_path / "evil.pt")


def test_embedding_word_becomes_its_vectors(sd1, tmp_path):
    """An embedding holding the token vectors of "red circle" encodes exactly as those words do."""
    torch.save({"string_to_param": {"*": token_vectors(sd1, "red circle")}}, tmp_path / "my-emb.pt")
    torch.save({"<w>": torch.zeros(1, 999)}, tmp_path / "wide.pt")
    emb = read_embedding(tmp_path / "my-emb.pt")
    text = sd1.text
    try:
        text.embeddings = EmbeddingVocabulary({"my-emb": emb, "wide": read_embedding(tmp_path / "wide.pt")},
                                              text.tokenize, text.width)
        assert list(text.embeddings.skipped) == ["wide"]
        chunk = text.chunks("a (my-emb:1.2), b")[0]
        assert chunk.ids[1:3] == [0, 0] and chunk.weights[1:3] == [1.2, 1.2] and chunk.embeddings[0][0] == 1
        assert torch.equal(text.encode("a my-emb on grass"), text.encode("a red circle on grass"))
        assert list(text.embeddings_used) == ["my-emb"]
        # an embedding does not straddle chunks: 74 tokens then a 2-vector embedding starts chunk 2
        chunks = text.chunks("x " * 74 + "my-emb")
        assert [len(c.ids) for c in chunks] == [74, 2] and chunks[1].embeddings[0][0] == 0
    finally:
        text.embeddings, text.embeddings_used = None, {}
    assert not torch.equal(text.encode("a my-emb on grass"), text.encode("a red circle on grass"))


def test_embedding_in_a_job_and_ti_hashes(engine, sd1):
    folder = engine.paths.embeddings_dirs[0]
    torch.save({"string_to_param": {"*": token_vectors(sd1, "red")}}, folder / "redword.pt")
    (folder / "broken.pt").write_bytes(b"not a pickle")  # skipped with a log line, never an error
    plain = gen(engine, "a red circle", negative_prompt="blue")
    used = gen(engine, "a redword circle", negative_prompt="blue")
    assert used.images[0].tobytes() == plain.images[0].tobytes()
    digest = hashlib.sha256((folder / "redword.pt").read_bytes()).hexdigest()[:12]
    assert f"TI hashes: \"redword: {digest}\"" in used.infotexts[0]
    assert "TI hashes" not in plain.infotexts[0]
    neg = gen(engine, "a circle", negative_prompt="redword")  # negative prompts count too, as in A1111
    assert f"redword: {digest}" in neg.infotexts[0]
    quiet = gen(engine, "a redword circle", negative_prompt="blue",
                override_settings={"textual_inversion_add_hashes_to_infotext": False})
    assert "TI hashes" not in quiet.infotexts[0]  # A1111's setting of that name
    assert "broken" in engine.networks.embedding_errors and "broken" not in engine.networks.embeddings()
    (folder / "broken.pt").unlink()
    (folder / "redword.png").write_bytes(b"png")
    write_lora(engine, "cardy", kohya_lora(sd1, which=("te",)))
    by_name = {c.name: c for c in engine.networks.refresh()}
    assert by_name["redword"].tab == "Textual Inversion" and by_name["redword"].insert() == "redword"
    assert by_name["redword"].preview == str(folder / "redword.png")
    assert by_name["cardy"].insert() == "<lora:cardy:1>" and by_name["cardy"].tab == "Lora"


# --- styles -------------------------------------------------------------------------------------

def test_folders_and_flags():
    from modules import cmd_args

    args = cmd_args.parse(["--lora-dir", "/x/loras", "--embeddings-dir", "/x/emb", "--styles-file", "/x/a.csv",
                           "--styles-file", "/x/b.csv"])
    p = paths.from_args("/data", lora_dir=args.lora_dir, embeddings_dir=args.embeddings_dir,
                        styles_files=args.styles_file)
    assert p.lora_dirs == (Path("/x/loras"), Path("/data/models/LyCORIS"))
    assert p.embeddings_dirs == (Path("/x/emb"),) and p.styles_files == (Path("/x/a.csv"), Path("/x/b.csv"))
    d = paths.from_args("/data")
    assert d.lora_dirs[0] == Path("/data/models/Lora") and d.embeddings_dirs == (Path("/data/embeddings"),)
    assert d.styles_files == (Path("/data/styles.csv"),)


def test_style_merging_rules():
    s = styles.PromptStyle
    assert styles.merge("masterpiece", "a cat") == "a cat, masterpiece"
    assert styles.merge("art of {prompt}, 4k", "a cat") == "art of a cat, 4k"
    assert styles.merge("masterpiece", "") == "masterpiece"
    assert styles.merge("", "a cat") == "a cat"
    assert styles.apply([s("1", "{prompt} in rain", "blur"), s("2", "oil", "")], "a cat", "ugly") == (
        "a cat in rain, oil", "ugly, blur")


def test_styles_from_csv_in_a_job(engine):
    engine.paths.styles_files[0].write_text(
        'name,prompt,negative_prompt\n"Rainy","{prompt}, rain, wet","sunny, dry"\nPlain,oil painting,\n',
        encoding="utf-8")
    result = gen(engine, "a red circle", negative_prompt="blur", styles=["Rainy", "Plain", "Nope"])
    assert result.infotexts[0].startswith("a red circle, rain, wet, oil painting\nNegative prompt: blur, sunny, dry\n")
    assert result.info["styles"] == ["Rainy", "Plain", "Nope"]
    assert any("'Nope' not found" in w for w in result.warnings)
    assert [s.name for s in engine.styles.all().values()] == ["Rainy", "Plain"]


# --- through the live server --------------------------------------------------------------------

@pytest.mark.server
def test_loras_embeddings_and_styles_through_the_api(tmp_path, tiny_dir):
    import json

    import requests

    from tests.support import tiny_models
    from tests.support.server import start_server, stop_server

    shutil.copytree(tiny_dir, tmp_path / "models" / "Stable-diffusion")
    (tmp_path / "config.json").write_text(json.dumps({"sd_model_checkpoint": "sd1.safetensors"}))
    tiny = tiny_models.build("sd1", seed=1)  # the same weights as sd1.safetensors
    g = torch.Generator().manual_seed(11)
    network = {}
    for name, m in tiny.unet.named_modules():
        if isinstance(m, torch.nn.Linear) and "attn2" in name:
            down, up = factors(m.weight, g)
            network[f"lora_unet_{_flat(name)}.lora_down.weight"] = down
            network[f"lora_unet_{_flat(name)}.lora_up.weight"] = up
    (tmp_path / "models" / "Lora").mkdir(parents=True)
    save_file(network, str(tmp_path / "models" / "Lora" / "ink.safetensors"),
              metadata={"ss_output_name": "inky", "ss_tag_frequency": '{"set": {"ink": 3}}'})
    (tmp_path / "embeddings").mkdir()
    words = tiny.text_encoder.get_input_embeddings().weight[[1000, 2000]].detach().clone()
    torch.save({"string_to_param": {"*": words}, "step": 10}, tmp_path / "embeddings" / "twoword.pt")
    torch.save({"string_to_param": {"*": torch.zeros(1, 768)}}, tmp_path / "embeddings" / "sd15wide.pt")
    (tmp_path / "styles.csv").write_text("name,prompt,negative_prompt\nInk,{prompt} in ink,color\n", encoding="utf-8")

    proc, url = start_server(tmp_path, "--nowebui")
    api = url + "/sdapi/v1"

    def txt2img(**body):
        r = requests.post(api + "/txt2img", json={"width": 64, "height": 64, "steps": 3, "seed": 3, **body},
                          timeout=300)
        assert r.status_code == 200, r.text
        return r.json()["images"][0], json.loads(r.json()["info"])

    try:
        base, _ = txt2img(prompt="a circle")
        inked, info = txt2img(prompt="a circle <lora:ink:0.7> <lora:nope:1>")
        assert inked != base
        assert any("LoRA not found: 'nope'" in w for w in info["warnings"])
        digest = lora.addnet_hash(tmp_path / "models" / "Lora" / "ink.safetensors")[:12]
        assert f"Lora hashes: \"ink: {digest}\"" in info["infotexts"][0]
        assert txt2img(prompt="a circle")[0] == base  # removed exactly
        # an infotext from elsewhere names the LoRA differently; its hash finds ours
        pasted, info = txt2img(infotext=f'a circle <lora:other-name:0.7>\nSteps: 3, Sampler: Euler, Seed: 3, '
                                        f'RNG: CPU, Lora hashes: "other-name: {digest}"')
        direct, direct_info = txt2img(prompt="a circle <lora:ink:0.7>")
        assert info["infotexts"][0] == direct_info["infotexts"][0] and info["warnings"] == []
        assert info["infotexts"][0].startswith("a circle <lora:ink:0.7>\n") and pasted == direct != base

        loras = requests.get(api + "/loras").json()
        assert [(x["name"], x["alias"]) for x in loras] == [("ink", "inky")]
        assert loras[0]["path"].endswith("ink.safetensors")
        assert loras[0]["metadata"] == {"ss_output_name": "inky", "ss_tag_frequency": {"set": {"ink": 3}}}
        save_file(network, str(tmp_path / "models" / "Lora" / "ink2.safetensors"))
        assert requests.post(api + "/refresh-loras").status_code == 200
        assert [x["name"] for x in requests.get(api + "/loras").json()] == ["ink", "ink2"]

        emb = requests.get(api + "/embeddings").json()
        assert emb["loaded"] == {"twoword": {"step": 10, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                             "shape": 32, "vectors": 2}}
        assert list(emb["skipped"]) == ["sd15wide"]
        _, info = txt2img(prompt="a twoword circle")
        assert "TI hashes: \"twoword: " in info["infotexts"][0]

        assert requests.get(api + "/prompt-styles").json() == [
            {"name": "Ink", "prompt": "{prompt} in ink", "negative_prompt": "color"}]
        _, info = txt2img(prompt="a circle", styles=["Ink"])
        assert info["infotexts"][0].startswith("a circle in ink\nNegative prompt: color\n")
        assert info["styles"] == ["Ink"] and not any("styles" in w for w in info["warnings"])
    finally:
        stop_server(proc)


# --- the hires prompt's own networks (A1111's hr_extra_network_data) -----------------------------------------

def hires_gen(engine, hr_prompt, prompt="a red circle", **kw):
    return gen(engine, prompt, enable_hr=True, hr_prompt=hr_prompt, hr_scale=1.5, denoising_strength=0.6,
               hr_second_pass_steps=2, steps=3, **kw)


def test_the_hires_prompts_networks_run_the_hires_pass_only(engine, sd1):
    before = snapshot(sd1)
    path = write_lora(engine, "hires-only", kohya_lora(sd1, seed=11))
    plain = hires_gen(engine, "a red circle")
    late = hires_gen(engine, "a red circle <lora:hires-only:1>")
    both = hires_gen(engine, "a red circle <lora:hires-only:1>", prompt="a red circle <lora:hires-only:1>")
    assert len({r.images[0].tobytes() for r in (plain, late, both)}) == 3 and late.warnings == []
    assert f'Lora hashes: "hires-only: {lora.addnet_hash(path)[:12]}"' in late.infotexts[0]
    # each batch's first pass runs without it again: the second of two batches is seed 8's picture made alone
    two = hires_gen(engine, "a red circle <lora:hires-only:1>", n_iter=2)
    assert two.images[1].tobytes() == hires_gen(engine, "a red circle <lora:hires-only:1>", seed=8).images[0].tobytes()
    assert two.images[0].tobytes() == late.images[0].tobytes()
    gen(engine, "x")
    assert same_weights(sd1, before)


def test_hires_fix_use_firstpass_conds_encodes_the_hires_prompt_with_the_first_pass_networks(engine, sd1):
    # a LoRA on the text encoder only: it changes the picture through the prompts' encoding alone
    write_lora(engine, "words", kohya_lora(sd1, seed=12, which=("te",)))
    plain = hires_gen(engine, "a red circle")
    late = hires_gen(engine, "a red circle <lora:words:1>")
    early = hires_gen(engine, "a red circle", prompt="a red circle <lora:words:1>")
    both = hires_gen(engine, "a red circle <lora:words:1>", prompt="a red circle <lora:words:1>")
    assert late.images[0].tobytes() != plain.images[0].tobytes()
    assert early.images[0].tobytes() not in (both.images[0].tobytes(), plain.images[0].tobytes())
    on = {"hires_fix_use_firstpass_conds": True}
    # with the setting the hires prompts are encoded as the first pass's were: the hires prompt's TE-only LoRA
    # changes nothing, and the prompt's reaches the hires pass as if both named it
    assert hires_gen(engine, "a red circle <lora:words:1>", override_settings=on).images[0].tobytes() == \
        plain.images[0].tobytes()
    assert hires_gen(engine, "a red circle", prompt="a red circle <lora:words:1>",
                     override_settings=on).images[0].tobytes() == both.images[0].tobytes()
