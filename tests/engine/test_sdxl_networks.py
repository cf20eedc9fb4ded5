"""LoRA and textual inversion on the tiny SDXL model: kohya's te1/te2/LDM names and diffusers' names reach the
intended layers with the documented change, removal is exact, a network or an embedding made for the other
family is skipped, and both show up in the infotext of a job."""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modules import paths
from modules.generation.params import GenerationParams
from modules.models import ldm_export, lora
from modules.models.embeddings import EmbeddingVocabulary, read_embedding
from tests.support import tiny_models
from tests.support.engine import make_engine, make_manager

RANK = 4
ALPHA = 2.0
NOTE = "it is made for another model family"


def _flat(name: str) -> str:
    return name.replace(".", "_")


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("sdxl-networks")
    folder = d / "models" / "Stable-diffusion"
    tiny_models.build("sdxl", seed=3).write(folder / "sdxl.safetensors")
    for name in ("sd1.safetensors", "sd1.yaml"):
        shutil.copy(tiny_dir / name, folder / name)
    return d


@pytest.fixture(scope="module")
def engine(data):
    paths.ensure_dirs(paths.from_args(str(data)))
    e = make_engine(data, checkpoint="sdxl.safetensors")
    e.load_checkpoint()
    yield e
    e.queue.stop()


@pytest.fixture(scope="module")
def xl(engine):
    model = engine.checkpoints.current
    assert model.family.name == "sdxl"
    return model


@pytest.fixture(scope="module")
def sd1(data):
    manager = make_manager(data)
    return manager.get(manager.checkpoints.find("sd1.safetensors"))


def parts(model) -> dict[str, torch.nn.Module]:
    return {"unet": model.unet, **model.text.lora_parts}


def linear_layers(module: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def wanted(part: str, name: str) -> bool:
    """The layers our test LoRAs change: attention, MLP, projections, label_emb and the resnets' convs."""
    if part == "unet":
        return any(s in name for s in ("attn", "ff.", "proj_", "add_embedding")) or (
            "resnets" in name and "conv" in name)
    return "self_attn" in name or "mlp" in name


def factors(weight: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    out_ch, in_ch = weight.shape[:2]
    if weight.dim() == 4:
        return (torch.randn(RANK, in_ch, *weight.shape[2:], generator=g) * 0.3,
                torch.randn(out_ch, RANK, 1, 1, generator=g) * 0.3)
    return torch.randn(RANK, in_ch, generator=g) * 0.3, torch.randn(out_ch, RANK, generator=g) * 0.3


def kohya_name(model, part: str, name: str) -> str:
    """kohya's key for a layer: LDM names for the U-Net, transformers names under `text_model_` for the text
    encoders (`lora_te_` for SD 1.x's one, `lora_te1_`/`lora_te2_` for SDXL's two)."""
    if part == "unet":
        with_attention = {i for i, k in enumerate(model.unet.config.up_block_types) if "CrossAttn" in k}
        ldm = ldm_export.unet_key(name + ".weight", model.unet.config.layers_per_block, with_attention)
        return "lora_unet_" + _flat(ldm.removesuffix(".weight"))
    prefix = {"te": "lora_te_", "te1": "lora_te1_", "te2": "lora_te2_"}[part]
    return prefix + "text_model_" + _flat(name.removeprefix("text_model."))


def make_lora(model, seed: int = 0, which: tuple[str, ...] | None = None) -> tuple[dict, dict]:
    """(kohya-layout state dict, {(part, module path): (down, up)}) over the model's layers."""
    g = torch.Generator().manual_seed(seed)
    sd, made = {}, {}
    for part, module in parts(model).items():
        if which is not None and part not in which:
            continue
        for name, m in linear_layers(module).items():
            if not wanted(part, name):
                continue
            down, up = factors(m.weight, g)
            key = kohya_name(model, part, name)
            sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
            sd[f"{key}.alpha"] = torch.tensor(ALPHA)
            made[(part, name)] = (down, up)
    return sd, made


def peft_lora(model, made: dict) -> dict:
    """The same factors in diffusers/PEFT naming (no alpha: alpha/rank folded into B)."""
    prefix = {"unet": "unet.", "te1": "text_encoder.text_model.", "te2": "text_encoder_2.text_model."}
    sd = {}
    for (part, name), (down, up) in made.items():
        key = prefix[part] + name.removeprefix("text_model.")
        sd[f"{key}.lora_A.weight"], sd[f"{key}.lora_B.weight"] = down, up * (ALPHA / RANK)
    return sd


def snapshot(model) -> dict[tuple[str, str], torch.Tensor]:
    return {(part, k): v.detach().clone() for part, module in parts(model).items()
            for k, v in module.state_dict().items()}


def activate(model, sd: dict, te: float = 1.0, unet: float = 1.0, name: str = "mem") -> list[str]:
    info = lora.LoraInfo(Path(f"{name}.safetensors"), name)
    return model.networks.apply([lora.Activation(info, te, unet, name)], read=lambda _path: sd)


def check_merged(model, before: dict, made: dict, te: float, unet: float) -> None:
    """Every weight is W + multiplier * up@down * alpha/rank where the LoRA names it, and untouched elsewhere."""
    expected = {}
    for (part, name), (down, up) in made.items():
        m = parts(model)[part].get_submodule(name)
        delta = (up.flatten(1) @ down.flatten(1)).reshape(m.weight.shape) * (ALPHA / RANK)
        expected[(part, f"{name}.weight")] = before[(part, f"{name}.weight")] + (unet if part == "unet" else te) * delta
    for key, now in snapshot(model).items():
        if key in expected:
            assert torch.allclose(now, expected[key], rtol=1e-5, atol=1e-6), key
        else:
            assert torch.equal(now, before[key]), key


def same(model, before: dict) -> bool:
    return all(torch.equal(v, before[k]) for k, v in snapshot(model).items())


# --- names ------------------------------------------------------------------------------------------------

def test_ldm_unet_names_reach_the_layers_holding_those_weights(xl, data):
    """Every U-Net matrix/conv of the SDXL file, by its LDM name (label_emb and the second block of a depth-2
    transformer included), names the module that holds that very tensor after loading."""
    from modules.models import checkpoint_file
    sd = checkpoint_file.read_state_dict(data / "models" / "Stable-diffusion" / "sdxl.safetensors")
    index = lora.module_index(xl.unet, xl.text.lora_parts)
    assert set(index) == {"unet", "te1", "te2"}
    keys = [k for k, v in sd.items() if k.startswith(ldm_export.UNET) and k.endswith(".weight") and v.dim() in (2, 4)]
    assert any("label_emb_0_0" in _flat(k) for k in keys) and any("transformer_blocks.1." in k for k in keys)
    for key in keys:
        flat = _flat(key.removeprefix(ldm_export.UNET).removesuffix(".weight"))
        module = xl.unet.get_submodule(index["unet"][flat])
        assert torch.equal(module.weight, sd[key].reshape(module.weight.shape)), key


# --- applying -----------------------------------------------------------------------------------------------

def test_kohya_sdxl_lora_changes_exactly_the_named_weights_and_restores_bit_identically(xl):
    before = snapshot(xl)
    sd, made = make_lora(xl, seed=1)
    assert {p for p, _ in made} == {"unet", "te1", "te2"}
    assert any("add_embedding" in n for _, n in made) and any("transformer_blocks.1" in n for _, n in made)
    try:
        assert activate(xl, sd, te=0.7, unet=0.4) == []
        assert xl.networks.touched == len(made)
        check_merged(xl, before, made, te=0.7, unet=0.4)
    finally:
        xl.networks.restore()
    assert same(xl, before)


def test_te_multiplier_drives_both_text_encoders(xl):
    before = snapshot(xl)
    sd, made = make_lora(xl, seed=2)

    def changed() -> set[str]:
        return {part for (part, _), v in snapshot(xl).items() if not torch.equal(v, before[(part, _)])}

    try:
        activate(xl, sd, te=0.0, unet=1.0)
        assert changed() == {"unet"}
        activate(xl, sd, te=1.0, unet=0.0)
        assert changed() == {"te1", "te2"}
        check_merged(xl, before, made, te=1.0, unet=0.0)
        activate(xl, sd, te=0.5, unet=0.0)
        check_merged(xl, before, made, te=0.5, unet=0.0)
    finally:
        xl.networks.restore()
    assert same(xl, before)


def test_diffusers_peft_naming_equals_kohya_naming(xl):
    before = snapshot(xl)
    sd, made = make_lora(xl, seed=3)
    try:
        assert activate(xl, peft_lora(xl, made), te=0.8, unet=0.6, name="peft") == []
        assert xl.networks.touched == len(made)
        check_merged(xl, before, made, te=0.8, unet=0.6)
    finally:
        xl.networks.restore()
    assert same(xl, before)


def test_a_lora_that_misses_a_few_layers_is_applied_with_a_note(xl):
    before = snapshot(xl)
    sd, made = make_lora(xl, seed=4)
    sd["lora_te2_text_model_encoder_layers_99_mlp_fc1.lora_down.weight"] = torch.zeros(RANK, 4)
    sd["lora_te2_text_model_encoder_layers_99_mlp_fc1.lora_up.weight"] = torch.zeros(4, RANK)
    try:
        notes = activate(xl, sd, name="few")
        assert len(notes) == 1 and "1 layer(s) match nothing" in notes[0] and NOTE not in notes[0]
        check_merged(xl, before, made, te=1.0, unet=1.0)
    finally:
        xl.networks.restore()
    assert same(xl, before)


# --- another family -------------------------------------------------------------------------------------------

def test_sd1_lora_on_sdxl_is_skipped_and_changes_nothing(xl, sd1):
    before = snapshot(xl)
    sd, made = make_lora(sd1, seed=5)
    assert any(k.startswith("lora_te_") for k in sd)
    notes = activate(xl, sd, name="sd15")
    assert len(notes) == 1 and "'sd15' skipped" in notes[0] and NOTE in notes[0] and "text-encoder" in notes[0]
    assert xl.networks.touched == 0 and same(xl, before)
    # its U-Net half alone: its cross-attention keys/values are made for SD 1.x's text width
    unet_only = {k: v for k, v in sd.items() if k.startswith("lora_unet_")}
    notes = activate(xl, unet_only, name="sd15unet")
    assert len(notes) == 1 and NOTE in notes[0] and "cross-attention key/value layers do not fit" in notes[0]
    assert xl.networks.touched == 0 and same(xl, before)
    # and a file of which most layers name nothing here
    stray = {k.replace("lora_unet_", "lora_unet_nowhere_"): v for k, v in unet_only.items() if "attn2_to_" not in k}
    notes = activate(xl, {**stray, **{k: v for k, v in sd.items() if "attn1_to_q" in k and "unet" in k}}, name="x")
    assert len(notes) == 1 and NOTE in notes[0] and "match no layer of this model or do not fit" in notes[0]
    assert xl.networks.touched == 0 and same(xl, before)


def test_sdxl_lora_on_sd1_is_skipped_and_sd1_loras_still_apply(xl, sd1):
    before = snapshot(sd1)
    sd, _ = make_lora(xl, seed=6)
    notes = activate(sd1, sd, name="xl")
    assert len(notes) == 1 and NOTE in notes[0] and "SDXL" in notes[0]
    assert sd1.networks.touched == 0 and same(sd1, before)
    own, made = make_lora(sd1, seed=7)
    try:
        assert activate(sd1, own, te=0.5, unet=1.0) == []
        check_merged(sd1, before, made, te=0.5, unet=1.0)
    finally:
        sd1.networks.restore()
    assert same(sd1, before)


# --- textual inversion ----------------------------------------------------------------------------------------

def token_vectors(encoder, words: str) -> torch.Tensor:
    ids = encoder.tokenize(words)
    return encoder.text_model.get_input_embeddings().weight[ids].detach().clone()


def write_sdxl_embedding(path: Path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    save_file({"clip_l": clip_l.contiguous(), "clip_g": clip_g.contiguous()}, str(path))
    return path


def encode(model, text: str):
    return model.text.encode_conds([text])[0]


def test_sdxl_embedding_splices_each_encoders_own_vectors(xl, tmp_path):
    """Random clip_l/clip_g vectors at a name's place give what the model gives when those vectors are the
    token embeddings of two words at the same place (spliced by hand into each encoder's table)."""
    g = torch.Generator().manual_seed(11)
    cl, cg = xl.text.clip_l, xl.text.clip_g
    vec_l, vec_g = torch.randn(2, cl.width, generator=g) * 0.02, torch.randn(2, cg.width, generator=g) * 0.02
    emb = read_embedding(write_sdxl_embedding(tmp_path / "xlemb.safetensors", vec_l, vec_g))
    assert emb.signature == (("clip_g", cg.width), ("clip_l", cl.width)) and emb.count == 2
    torch.save({"string_to_param": {"*": torch.zeros(2, cl.width)}}, tmp_path / "sd15emb.pt")
    single = read_embedding(tmp_path / "sd15emb.pt")
    text = xl.text
    try:
        text.embeddings = EmbeddingVocabulary({"xlemb": emb, "sd15emb": single}, text.tokenize,
                                              text.embedding_signature)
        assert list(text.embeddings.usable) == ["xlemb"] and list(text.embeddings.skipped) == ["sd15emb"]
        got = encode(xl, "a xlemb on grass")
        assert list(text.embeddings_used) == ["xlemb"]
        skipped = encode(xl, "a sd15emb on grass")  # read as its words, not as an embedding
    finally:
        text.embeddings, text.embeddings_used = None, {}
    assert torch.equal(skipped.context, encode(xl, "a sd15emb on grass").context)
    ids = text.tokenize("red circle")
    tables = [cl.text_model.get_input_embeddings().weight, cg.text_model.get_input_embeddings().weight]
    saved = [t[ids].clone() for t in tables]
    try:
        with torch.no_grad():
            tables[0][ids], tables[1][ids] = vec_l, vec_g
        by_hand = encode(xl, "a red circle on grass")
    finally:
        with torch.no_grad():
            tables[0][ids], tables[1][ids] = saved
    assert torch.allclose(got.context, by_hand.context, atol=1e-6) and torch.allclose(got.pooled, by_hand.pooled,
                                                                                      atol=1e-6)
    assert not torch.allclose(got.context, encode(xl, "a red circle on grass").context)


def test_clip_l_and_clip_g_halves_follow_their_own_tensor(xl, tmp_path):
    """An SDXL file whose clip_l holds "red circle"'s CLIP-L vectors and clip_g other vectors: the CLIP-L half
    of the context is the words', the bigG half is not."""
    cl, cg = xl.text.clip_l, xl.text.clip_g
    emb = read_embedding(write_sdxl_embedding(tmp_path / "half.safetensors", token_vectors(cl, "red circle"),
                                              token_vectors(cg, "blue square")))
    text = xl.text
    try:
        text.embeddings = EmbeddingVocabulary({"half": emb}, text.tokenize, text.embedding_signature)
        got = encode(xl, "a half on grass").context
    finally:
        text.embeddings, text.embeddings_used = None, {}
    red, blue = encode(xl, "a red circle on grass").context, encode(xl, "a blue square on grass").context
    assert torch.equal(got[:, :cl.width], red[:, :cl.width])
    assert torch.equal(got[:, cl.width:], blue[:, cl.width:])


def test_sdxl_embedding_is_skipped_for_sd1(sd1, tmp_path):
    emb = read_embedding(write_sdxl_embedding(tmp_path / "xl.safetensors", torch.zeros(1, 32), torch.zeros(1, 64)))
    torch.save({"string_to_param": {"*": torch.zeros(1, sd1.text.width)}}, tmp_path / "plain.pt")
    vocab = EmbeddingVocabulary({"xl": emb, "plain": read_embedding(tmp_path / "plain.pt")}, sd1.text.tokenize,
                                sd1.text.embedding_signature)
    assert list(vocab.usable) == ["plain"] and list(vocab.skipped) == ["xl"]


# --- through the engine -----------------------------------------------------------------------------------------

def test_txt2img_with_sdxl_lora_and_embedding_writes_their_hashes(engine, xl):
    sd, _ = make_lora(xl, seed=8)
    lora_path = engine.paths.lora_dirs[0] / "xl-detail.safetensors"
    lora_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(lora_path))
    engine.networks.refresh_loras()
    folder = engine.paths.embeddings_dirs[0]
    emb_path = write_sdxl_embedding(folder / "xlword.safetensors", token_vectors(xl.text.clip_l, "red"),
                                    token_vectors(xl.text.clip_g, "red"))
    torch.save({"string_to_param": {"*": torch.zeros(1, xl.text.clip_l.width)}}, folder / "oldword.pt")
    before = snapshot(xl)
    base = dict(negative_prompt="", width=64, height=64, steps=3, sampler_name="Euler", seed=5, save_images=False)
    plain = engine.txt2img(GenerationParams(prompt="a red circle", **base))
    with_ti = engine.txt2img(GenerationParams(prompt="a xlword circle", **base))
    assert with_ti.images[0].tobytes() == plain.images[0].tobytes()  # the vectors are those of "red"
    both = engine.txt2img(GenerationParams(prompt="a xlword circle oldword <lora:xl-detail:0.8>", **base))
    info = both.infotexts[0]
    ti_hash = hashlib.sha256(emb_path.read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "xlword: {ti_hash}"' in info and "oldword" not in info.split("TI hashes")[1]
    assert f'Lora hashes: "xl-detail: {lora.addnet_hash(lora_path)[:12]}"' in info
    assert both.images[0].tobytes() != with_ti.images[0].tobytes()
    assert "oldword" in xl.text.embeddings.skipped and "xlword" in xl.text.embeddings.usable
    engine.txt2img(GenerationParams(prompt="a red circle", **base))  # no LoRA: the weights go back
    assert same(xl, before)


def test_a_fp16_copy_restores_exactly(xl):
    """Half-precision SDXL weights merge in fp32 and go back bit-identically."""
    unet = copy.deepcopy(xl.unet).half()
    te = {k: copy.deepcopy(v).half() for k, v in xl.text.lora_parts.items()}
    before = {(p, k): v.clone() for p, m in {"unet": unet, **te}.items() for k, v in m.state_dict().items()}
    patcher = lora.WeightPatcher(unet, te)
    sd, _ = make_lora(xl, seed=9)
    info = lora.LoraInfo(Path("h.safetensors"), "h")
    assert patcher.apply([lora.Activation(info, 1.0, 1.0, "h")], read=lambda _path: sd) == []
    assert patcher.touched > 0
    patcher.restore()
    assert all(torch.equal(v, before[(p, k)]) for p, m in {"unet": unet, **te}.items()
               for k, v in m.state_dict().items())
