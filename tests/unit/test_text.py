"""Tokenizer data, A1111's prompt chunking, and infotext writing/reading."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from transformers import CLIPTokenizer

from modules import infotext
from modules.generation.conditioning import CHUNK, chunk_tokens
from modules.paths import TOKENIZER_DIR

COMMA = 267


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def test_shipped_vocabulary_tokenises_like_clip(tokenizer):
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.convert_tokens_to_ids(",</w>") == COMMA
    assert tokenizer("masterpiece, best quality", add_special_tokens=False).input_ids == [12066, 267, 949, 3027]


def test_chunks_of_75_and_comma_backtrack():
    assert chunk_tokens([], COMMA) == [[]]
    plain = list(range(1000, 1160))
    assert [len(c) for c in chunk_tokens(plain, COMMA)] == [75, 75, 10]
    # A comma 5 tokens before the end of a full chunk: the 4 tokens after it move to the next chunk.
    tokens = list(range(1000, 1070)) + [COMMA] + list(range(2000, 2010))
    chunks = chunk_tokens(tokens, COMMA)
    assert chunks[0] == tokens[:71] and chunks[1] == tokens[71:]
    # A comma further back than 20 tokens does not move anything.
    tokens = list(range(1000, 1040)) + [COMMA] + list(range(2000, 2050))
    assert [len(c) for c in chunk_tokens(tokens, COMMA)] == [75, 16]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([COMMA, 320, 321, 322]), max_size=400))
def test_chunking_keeps_every_token_in_order(tokens):
    chunks = chunk_tokens(tokens, COMMA)
    assert [t for c in chunks for t in c] == tokens
    assert all(len(c) <= CHUNK for c in chunks)


def test_infotext_round_trip_and_quoting():
    text = infotext.create("a cat,\nin a hat", "blurry, lowres", {
        "Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7.0, "Seed": 1,
        "Size": "512x768", "Model": "my: model", "Clip skip": None, "Note": 'say "hi", twice'})
    assert text.split("\n")[-1] == ('Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, '
                                     'Size: 512x768, Model: "my: model", Note: "say \\"hi\\", twice"')
    parsed = infotext.parse(text)
    assert parsed["Prompt"] == "a cat,\nin a hat" and parsed["Negative prompt"] == "blurry, lowres"
    assert parsed["Model"] == "my: model" and parsed["Note"] == 'say "hi", twice'
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "768")
    assert "Clip skip" not in parsed


def test_parse_reads_an_a1111_infotext():
    text = ("masterpiece, (1girl:1.2)\nNegative prompt: easynegative\nSteps: 30, Sampler: Euler a, Schedule type: "
            "Automatic, CFG scale: 6.5, Seed: 42, Size: 832x1216, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, "
            'Lora hashes: "detail_tweaker: 7c6bad76eb54", Version: v1.10.1')
    p = infotext.parse(text)
    assert p["Prompt"] == "masterpiece, (1girl:1.2)" and p["CFG scale"] == "6.5"
    assert p["Lora hashes"] == "detail_tweaker: 7c6bad76eb54" and p["Version"] == "v1.10.1"
    # a prompt whose last line is not a parameter line stays prompt
    assert infotext.parse("just a prompt: with colon")["Prompt"] == "just a prompt: with colon"


def test_infotext_setting_keys_become_typed_override_settings():
    p = infotext.parse("a cat\nSteps: 20, Sampler: UniPC, UniPC variant: bh2, UniPC skip type: logSNR, UniPC order: 2, "
                       "UniPC lower order final: False, Clip skip: 2, Eta DDIM: 0.5")
    assert infotext.request_values(p, infotext.SETTING_FIELDS) == {
        "CLIP_stop_at_last_layers": 2, "eta_ddim": 0.5, "uni_pc_variant": "bh2", "uni_pc_skip_type": "logSNR",
        "uni_pc_order": 2, "uni_pc_lower_order_final": False}
    padded = infotext.parse("a cat\nSteps: 20, Seed: 1, Pad conds: True, Pad conds v0: True")  # A1111's paste
    assert infotext.request_values(padded, infotext.SETTING_FIELDS) == {"pad_cond_uncond": True,
                                                                         "pad_cond_uncond_v0": True}
    with pytest.raises(ValueError, match="UniPC lower order final"):
        infotext.request_values(infotext.parse("x\nSteps: 2, Seed: 1, UniPC lower order final: maybe"),
                                infotext.SETTING_FIELDS)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text())
def test_parse_never_raises(a, b):
    infotext.parse(a + "\n" + b)
