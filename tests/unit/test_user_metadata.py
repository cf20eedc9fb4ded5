"""Extra-network user metadata (`NAME.json` beside a network file, A1111's format) and what a card click writes
with it. Where A1111's behaviour is restated, the source is named: extensions-builtin/Lora/ui_extra_networks_lora.py
(the tag and activation text), ui_edit_user_metadata.py (the keys, build_tags, the tag click) and
javascript/extraNetworks.js (the toggle)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import save_file
import torch

from modules.generation import extra_networks
from modules.generation.extra_networks import Card
from modules.models import user_metadata
from modules.models.embeddings import EmbeddingRegistry
from modules.models.hypernetwork import HypernetworkRegistry
from modules.models.lora import LoraRegistry
from modules.models.user_metadata import UserMetadata
from modules.services.networks import NetworksService


def lora_card(**meta) -> Card:
    return Card("Lora", "detail", "/m/Lora/detail.safetensors", None, UserMetadata(**meta))


# --- the tag a click writes -----------------------------------------------------------------------------

def test_lora_tag_uses_the_preferred_weight_else_the_default_multiplier_as_a1111_writes_them():
    # A1111's card holds a JavaScript expression, "<lora:NAME:" + WEIGHT + ">": numbers print as JavaScript's
    assert lora_card().tag() == "<lora:detail:1>"  # opts.extra_networks_default_multiplier
    assert lora_card().tag(0.5) == "<lora:detail:0.5>"
    assert lora_card(preferred_weight=0.8).tag(0.5) == "<lora:detail:0.8>"
    assert lora_card(preferred_weight=1.0).tag() == "<lora:detail:1>"  # str(1.0) in Python, 1 in JavaScript
    hyper = Card("Hypernetworks", "anime", "/m/h/anime.pt", None, UserMetadata(preferred_weight=0.3))
    assert hyper.tag(0.7) == "<hypernet:anime:0.7>"  # only a LoRA has a preferred weight
    assert extra_networks.js_number(2.0) == "2" and extra_networks.js_number(0.25) == "0.25"


def test_click_adds_tag_activation_and_negative_text_and_a_second_click_takes_them_out():
    card = lora_card(activation_text="sharp focus, 8k", negative_text="blurry", preferred_weight=0.6)
    prompt, negative = card.toggled("a castle", "lowres")
    assert (prompt, negative) == ("a castle <lora:detail:0.6> sharp focus, 8k", "lowres blurry")
    assert card.toggled(prompt, negative) == ("a castle", "lowres")
    # an empty prompt gets the text alone; a tag typed with another weight (or as lyco) is still this card's
    assert card.toggled("", "") == ("<lora:detail:0.6> sharp focus, 8k", "blurry")
    assert card.toggled("a <lora:detail:0.35> b", "") == ("a b", "")
    assert card.toggled("a <lyco:detail:1> sharp focus, 8k, b", "") == ("a , b", "")
    # another LoRA whose name starts the same is not this card's
    assert card.toggled("a <lora:detailed:1>", "x")[0].startswith("a <lora:detailed:1> <lora:detail:0.6>")


def test_click_without_metadata_and_for_other_kinds():
    plain = lora_card()
    assert plain.toggled("a cat", "dark") == ("a cat <lora:detail:1>", "dark")
    assert plain.toggled("a cat <lora:detail:1>", "dark") == ("a cat", "dark")
    emb = Card("Textual Inversion", "shiny", "/e/shiny.pt", None, UserMetadata(negative_text="x"))
    assert emb.toggled("a red circle", "") == ("a red circle shiny", "")  # only a LoRA has negative text
    assert emb.toggled("a red circle shiny", "") == ("a red circle", "")
    assert emb.toggled("a cat", "blurry", negative_focused=True) == ("a cat", "blurry shiny")
    assert emb.toggled("a cat", "blurry shiny", negative_focused=True) == ("a cat", "blurry")
    assert lora_card().toggled("a cat", "x", negative_focused=True) == ("a cat <lora:detail:1>", "x")  # LoRA: prompt
    # the name as a word of its own: other words that hold it are not this embedding
    assert emb.toggled("shinyboots, <lora:shiny-style:1>", "")[0] == "shinyboots, <lora:shiny-style:1> shiny"


# --- the file -------------------------------------------------------------------------------------------

def test_read_and_write_keep_a1111s_keys_and_any_other(tmp_path):
    model = tmp_path / "style.v2.safetensors"
    model.write_bytes(b"")
    assert user_metadata.path_for(model) == tmp_path / "style.v2.json"  # only the last extension goes
    assert user_metadata.read(model) == {}
    # a file as A1111 writes it, with a key of some extension
    (tmp_path / "style.v2.json").write_text(json.dumps({
        "description": "old", "sd version": "SD1", "activation text": "a", "preferred weight": 0.5,
        "negative text": "n", "notes": "x", "modelId": 1234}), encoding="utf-8")
    meta = UserMetadata.of(user_metadata.read(model))
    assert meta == UserMetadata("old", "x", "SD1", "a", 0.5, "n")
    user_metadata.write(model, UserMetadata("new", "notes", "SDXL", "trigger", 1.25, ""), lora=True)
    data = json.loads((tmp_path / "style.v2.json").read_text(encoding="utf-8"))
    assert data == {"description": "new", "sd version": "SDXL", "activation text": "trigger",
                    "preferred weight": 1.25, "negative text": "", "notes": "notes", "modelId": 1234}
    # an embedding's or hypernetwork's editor has description and notes only
    emb = tmp_path / "shiny.pt"
    user_metadata.write(emb, UserMetadata("d", "n", activation_text="ignored", vae="ignored"), lora=False)
    assert json.loads((tmp_path / "shiny.json").read_text()) == {"description": "d", "notes": "n"}
    # a checkpoint's: description, notes and its preferred VAE (A1111's "vae"), other keys kept
    ckpt = tmp_path / "painter.safetensors"
    assert user_metadata.preferred_vae(ckpt) == "Automatic"  # no file
    (tmp_path / "painter.json").write_text(json.dumps({"vae": 3, "rating": 5}), encoding="utf-8")
    assert user_metadata.preferred_vae(ckpt) == "Automatic"  # not a name
    user_metadata.write(ckpt, UserMetadata("d", "n", vae="vae-ft-mse.safetensors"), lora=False, checkpoint=True)
    assert json.loads((tmp_path / "painter.json").read_text()) == {
        "description": "d", "notes": "n", "vae": "vae-ft-mse.safetensors", "rating": 5}
    assert user_metadata.preferred_vae(ckpt) == "vae-ft-mse.safetensors"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\xff\xfe"])
def test_a_broken_file_is_no_metadata_and_is_not_saved_over(tmp_path, content, caplog):
    model = tmp_path / "x.safetensors"
    (tmp_path / "x.json").write_bytes(content.encode("latin-1"))
    assert user_metadata.read(model) == {}
    assert "x.json" in caplog.text
    with pytest.raises(user_metadata.BrokenFile, match="x.json"):
        user_metadata.write(model, UserMetadata(notes="n"), lora=True)
    assert (tmp_path / "x.json").read_bytes() == content.encode("latin-1")


def test_wrong_types_are_read_as_absent_and_bad_values_are_refused_on_save(tmp_path):
    meta = UserMetadata.of({"description": 5, "preferred weight": "heavy", "sd version": "SD9",
                            "activation text": None})
    assert meta == UserMetadata()
    assert UserMetadata.of({"preferred weight": "0.7"}).preferred_weight == 0.7
    assert UserMetadata.of({}, description="from NAME.txt").description == "from NAME.txt"
    with pytest.raises(ValueError, match="Preferred weight"):
        user_metadata.write(tmp_path / "x.safetensors", UserMetadata(preferred_weight=150.0), lora=True)
    with pytest.raises(ValueError, match="Stable Diffusion version"):
        user_metadata.write(tmp_path / "x.safetensors", UserMetadata(sd_version="SD9"), lora=True)
    assert not (tmp_path / "x.json").exists()


def test_description_from_a_text_file_beside(tmp_path):
    model = tmp_path / "x.safetensors"
    assert user_metadata.description_file(model) == ""
    (tmp_path / "x.description.txt").write_text("second choice", encoding="utf-8")
    assert user_metadata.description_file(model) == "second choice"
    (tmp_path / "x.txt").write_text("first choice", encoding="utf-8")
    assert user_metadata.description_file(model) == "first choice"


# --- the LoRA editor's helpers --------------------------------------------------------------------------

def test_dataset_tags_sum_over_folders_and_fall_back_to_words_for_captions():
    meta = {"ss_tag_frequency": json.dumps({"10_a": {"red": 3, " blue": 2}, "5_b": {"blue": 4, "green": 1}})}
    assert user_metadata.dataset_tags(meta) == [("blue", 6), ("red", 3), ("green", 1)]
    captions = {"ss_tag_frequency": {"x": {"a photo of a red house by the sea": 2,
                                           "a photo of the old red barn": 1}}}
    tags = dict(user_metadata.dataset_tags(captions))
    assert tags["photo"] == 3 and tags["red"] == 3 and tags["sea"] == 2 and "of" not in tags and "a" not in tags
    assert user_metadata.dataset_tags({"ss_tag_frequency": "{broken"}) == []
    assert user_metadata.dataset_tags({}) == []


def test_a_tag_click_adds_or_removes_it_from_the_activation_text():
    assert user_metadata.toggle_tag("", "red") == "red"
    assert user_metadata.toggle_tag("red", "blue") == "red, blue"
    assert user_metadata.toggle_tag("red, blue ,green", "blue") == "red, green"


def test_lora_facts_from_kohya_metadata():
    meta = {"ss_output_name": "mystyle", "ss_sd_model_name": "v1-5.ckpt", "ss_clip_skip": "None",
            "ss_network_module": "networks.lora", "ss_training_started_at": "1700000000",
            "ss_bucket_info": json.dumps({"buckets": {"0": {"resolution": [512, 768], "count": 3},
                                                      "1": {"resolution": [512, 512], "count": 10}}}),
            "ss_dataset_dirs": json.dumps({"10_a": {"n_repeats": 10, "img_count": 7},
                                           "5_b": {"n_repeats": 5, "img_count": 6}})}
    assert user_metadata.lora_facts(meta) == [
        ("Output name", "mystyle"), ("Model", "v1-5.ckpt"), ("Kohya module", "networks.lora"),
        ("Date trained", "2023-11-14 22:13"), ("Resolutions", "512x512, 768x512"), ("Dataset size", "13")]
    assert user_metadata.lora_facts({"ss_bucket_info": "{bad"}) == []


# --- through the service: files named by card, never by path -------------------------------------------

def test_service_saves_metadata_and_previews_beside_the_listed_file(tmp_path):
    from PIL import Image

    from modules import images

    folder = tmp_path / "Lora"
    (folder / "old").mkdir(parents=True)
    for where in (folder, folder / "old"):  # one name in two folders: two cards, each its own files
        save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(where / "ink.safetensors"),
                  {"ss_output_name": "ink"})
    service = NetworksService(LoraRegistry((folder,)), EmbeddingRegistry(()), HypernetworkRegistry(()))
    path, other = str((folder / "ink.safetensors").resolve()), str((folder / "old" / "ink.safetensors").resolve())
    assert {c.path for c in service.cards()} == {path, other}
    card = service.save_user_metadata("Lora", path, UserMetadata(activation_text="ink style", preferred_weight=0.9))
    assert card.insert() == "<lora:ink:0.9> ink style"
    assert json.loads((folder / "ink.json").read_text())["activation text"] == "ink style"
    assert not (folder / "old" / "ink.json").exists()
    assert service.find_card("Lora", path).meta.activation_text == "ink style"  # read again from the file
    for tab, key in (("Lora", str(folder / ".." / "Lora" / "ink.safetensors")), ("Lora", str(tmp_path / "x")),
                     ("Textual Inversion", path)):
        with pytest.raises(ValueError, match="no .* card for"):  # only a listed file, by its exact listing
            service.save_user_metadata(tab, key, UserMetadata())
    assert sorted(p.name for p in folder.iterdir()) == ["ink.json", "ink.safetensors", "old"]

    picture = Image.new("RGB", (32, 32), (10, 200, 30))
    card = service.replace_preview("Lora", other, picture, "a prompt\nSteps: 4, Seed: 1")
    assert Path(card.preview) == folder / "old" / "ink.png" and not (folder / "ink.png").exists()
    with Image.open(folder / "old" / "ink.png") as im:
        assert im.getpixel((3, 3)) == (10, 200, 30)
        assert images.read_infotext(im) == "a prompt\nSteps: 4, Seed: 1"
    assert service.lora_metadata(path)["ss_output_name"] == "ink" and service.lora_metadata("ink") == {}


# --- the Lora page lists the networks for the loaded model's version (A1111's network.py detect_version and
# ui_extra_networks_lora.py create_item) ------------------------------------------------------------------

def test_version_from_kohya_metadata_and_which_cards_a_model_lists():
    from modules.models.lora import LoraInfo

    def info(**metadata):
        return LoraInfo(Path("/m/x.safetensors"), "x", metadata)

    assert info(ss_base_model_version="sdxl_base_v1-0").sd_version == "SDXL"
    assert info(ss_v2="True").sd_version == "SD2"
    assert info(ss_output_name="x").sd_version == "SD1" and info().sd_version == "Unknown"

    def card(detected, chosen="Unknown"):
        return Card("Lora", "x", "/m/x.safetensors", None, UserMetadata(sd_version=chosen), detected)

    assert card("SD1").shown_for("SD1") and not card("SDXL").shown_for("SD1")
    assert card("SD1", chosen="SDXL").shown_for("SDXL")  # the user's "sd version" wins over the file's
    assert card("Unknown").shown_for("SDXL") and not card("Unknown").shown_for("SDXL", hide_unknown_for=("SDXL",))
    assert card("SDXL").shown_for("SD1", show_all=True)
    assert Card("Textual Inversion", "e", "/e.pt", None).shown_for("SDXL")  # only the Lora page is filtered


# --- lora_preferred_name: a card's tag names the LoRA by its alias (A1111's default) or its file name ----------

def test_cards_tag_a_lora_by_its_alias_unless_the_setting_or_a_clash_says_file_name(tmp_path):
    """A1111 (networks.list_available_networks, NetworkOnDisk.get_alias): the alias is the metadata's
    ss_output_name; "none" is forbidden, and so is an alias that an earlier file in the list already had as its
    name or alias; a forbidden alias gives the file name."""
    folder = tmp_path / "Lora"
    folder.mkdir()
    aliases = {"detail_v2": "detail", "nothing": "None", "p1": "shared", "p2": "shared", "q": "r", "r": None}
    for name, alias in aliases.items():
        save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(folder / f"{name}.safetensors"),
                  {"ss_output_name": alias} if alias else None)
    service = NetworksService(LoraRegistry((folder,)), EmbeddingRegistry(()), HypernetworkRegistry(()))
    by_name = {c.name: c for c in service.cards()}
    assert {n: c.tag() for n, c in by_name.items()} == {
        "detail_v2": "<lora:detail:1>", "nothing": "<lora:nothing:1>", "p1": "<lora:p1:1>", "p2": "<lora:p2:1>",
        "q": "<lora:q:1>", "r": "<lora:r:1>"}
    assert by_name["detail_v2"].tag(0.8, by_alias=False) == "<lora:detail_v2:0.8>"  # setting "Filename"
    found = service.find_card("Lora", by_name["detail_v2"].path)
    assert found.insert() == "<lora:detail:1>"  # the card a click reads again has its alias too
    card = by_name["detail_v2"]
    prompt, _ = card.toggled("a castle", "", 1.0)
    assert prompt == "a castle <lora:detail:1>"
    assert card.toggled(prompt, "")[0] == "a castle"  # a second click takes it out
    assert card.toggled("a castle <lora:detail_v2:0.5>", "", by_alias=True)[0] == "a castle"  # by file name too
    assert card.toggled("a castle", "", by_alias=False)[0] == "a castle <lora:detail_v2:1>"
    assert service.find_lora("detail") is service.find_lora("detail_v2")  # both mean the one file
