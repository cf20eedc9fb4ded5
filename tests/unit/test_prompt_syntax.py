"""A1111's prompt syntax: emphasis, BREAK, prompt editing, alternation, AND and extra-network tags.

The expected values of the parser tests are the examples in AUTOMATIC1111's own docstrings
(`parse_prompt_attention`, `get_learned_conditioning_prompt_schedules`) plus edge cases; the
conditioning and sampling tests check the tensors the text encoder and the U-Net actually receive.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

from modules import prompt_syntax, styles
from modules.prompt_syntax import Timeline
from modules.generation import extra_networks, pipeline, rng, samplers
from modules.generation.conditioning import CHUNK, build_chunks
from modules.generation.params import GenerationParams
from modules.services.errors import describe_validation_error
from tests.support.engine import make_engine, make_manager

COMMA = 267


# --- emphasis: parse_attention ---------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
])
def test_attention_examples_from_a1111(text, expected):
    assert prompt_syntax.parse_attention(text) == expected


def test_attention_rules_and_edge_cases():
    pa = prompt_syntax.parse_attention
    assert pa("((word))") == [("word", 1.1 * 1.1)]
    assert pa("[word]") == [("word", 1 / 1.1)]
    assert pa("[[word]]") == [("word", 1 / 1.1 / 1.1)]
    assert pa("(word:1.5)") == [("word", 1.5)]
    assert pa("( word : 0.25 )") == [(" word ", 0.25)]  # whitespace around the number is allowed
    assert pa("((a:1.5) b)") == [("a", 1.5 * 1.1), (" b", 1.1)]  # nested weights multiply
    assert pa("[a (b) c]") == [("a ", 1 / 1.1), ("b", 1.1 / 1.1), (" c", 1 / 1.1)]
    assert pa("unbalanced]") == [("unbalanced]", 1.0)]
    assert pa("a) b") == [("a) b", 1.0)]
    assert pa("[unclosed") == [("unclosed", 1 / 1.1)]
    assert pa("a (b [c") == [("a ", 1.0), ("b ", 1.1), ("c", 1.1 / 1.1)]  # unclosed: all ( first, then [
    assert pa("\\\\ and \\)") == [("\\ and )", 1.0)]
    assert pa("C:\\path") == [("C:path", 1.0)]  # a backslash before anything else is dropped
    assert pa("a: b:1.2)") == [("a: b:1.2)", 1.0)]  # colons are text outside (x:n); `:n)` with no ( too
    assert pa("(a:b)") == [("a:b", 1.1)]  # not a number: the colon is text, the parens weigh 1.1
    assert pa("(a:1.2.3)") == [("a:1.2.3", 1.1)]  # A1111 fails the job here; we read it as text
    assert pa("(a:-1)") == [("a", -1.0)]
    assert pa("") == [("", 1.0)]
    assert pa("(a)(b:1.1)") == [("ab", 1.1)]  # adjacent equal weights merge


def test_break_marks_a_chunk_boundary():
    pa = prompt_syntax.parse_attention
    assert pa("a BREAK b") == [("a", 1.0), prompt_syntax.BREAK, ("b", 1.0)]
    assert pa("a\nBREAK\tb") == [("a", 1.0), prompt_syntax.BREAK, ("b", 1.0)]
    assert pa("aBREAK b, break, Break") == [("aBREAK b, break, Break", 1.0)]  # uppercase whole word only
    assert pa("BREAK") == [("", 1.0), prompt_syntax.BREAK, ("", 1.0)]
    # inside brackets BREAK still breaks (A1111 would weigh its marker and encode the word "BREAK")
    assert pa("(a BREAK b)") == [("a", 1.1), prompt_syntax.BREAK, ("b", 1.1)]


# --- prompt editing and alternation ----------------------------------------------------------------

@pytest.mark.parametrize("prompt,expected", [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(s, "a" if s % 2 else "(b:1.1)") for s in range(1, 11)]),
    ("[fe|]male", [(s, "female" if s % 2 else "male") for s in range(1, 11)]),
    ("[fe|||]male", [(s, "female" if s % 4 == 1 else "male") for s in range(1, 11)]),
])
def test_schedule_examples_from_a1111(prompt, expected):
    assert prompt_syntax.prompt_schedule(prompt, 10) == expected


def test_schedule_rules_and_edge_cases():
    ps = prompt_syntax.prompt_schedule
    assert ps("a [b:c:2] d", 5) == [(2, "a b d"), (5, "a c d")]
    assert ps("[a:b:0.5]", 10) == [(5, "a"), (10, "b")]  # decimal point: fraction of the steps
    assert ps("[a:b:0.5]", 7) == [(3, "a"), (7, "b")]  # int(0.5 * 7)
    assert ps("[a:b:1.0]", 10) == [(10, "a")]  # 1.0 is a fraction: the whole run
    assert ps("[a:b:1]", 10) == [(1, "a"), (10, "b")]  # 1 is a step number
    assert ps("[a:b:1e1]", 20) == [(10, "a"), (20, "b")]  # no decimal point: steps
    assert ps("[a:b:25]", 10) == [(10, "a")]  # past the end: capped
    assert ps("[a:b:0]", 10) == [(10, "b")]
    assert ps("[a:b:-3]", 10) == [(10, "b")]
    assert ps("[a:b:1e400]", 10) == [(10, "a")]  # A1111 overflows here; we cap it
    assert ps("[a::3] x", 4) == [(3, "a x"), (4, " x")]  # [from::when] removes
    assert ps("[[a|b]:c:2]", 4) == [(1, "a"), (2, "b"), (3, "c"), (4, "c")]
    assert ps("[a|b]", 1) == [(1, "a")]
    assert ps("[a:b:c]", 10) == [(10, "[a:b:c]")]  # not a number: literal text
    assert ps("[a:b:2 3]", 10) == [(10, "[a:b:2 3]")]
    # whole-prompt failures leave the prompt literal, schedules included
    assert ps("a | b [c:d:2]", 10) == [(10, "a | b [c:d:2]")]
    assert ps("(a|b) [c:d:2]", 10) == [(10, "(a|b) [c:d:2]")]
    assert ps("[c:d:2] trailing\\", 10) == [(10, "[c:d:2] trailing\\")]
    # escapes stay escaped (the emphasis parser reads them later) and hide brackets from editing
    assert ps("\\[a:b:2\\] [c:d:2]", 4) == [(2, "\\[a:b:2\\] c"), (4, "\\[a:b:2\\] d")]
    # emphasis brackets are text at this layer and may contain edits
    assert ps("((a [b:c:1]):1.2)", 3) == [(1, "((a b):1.2)"), (3, "((a c):1.2)")]
    assert ps("x" + "(" * 500 + "[a:b:1]", 2) == [(1, "x" + "(" * 500 + "a"), (2, "x" + "(" * 500 + "b")]


def test_and_splits_with_weights():
    assert prompt_syntax.split_and("a cat :1.2 AND a dog :0.8") == [("a cat", 1.2), (" a dog", 0.8)]
    assert prompt_syntax.split_and("a AND b AND c") == [("a", 1.0), (" b", 1.0), (" c", 1.0)]
    assert prompt_syntax.split_and("a:-0.5 AND b: .5") == [("a", -0.5), (" b", 0.5)]
    assert prompt_syntax.split_and("cats and dogs, ANDROID, SAND") == [("cats and dogs, ANDROID, SAND", 1.0)]
    assert prompt_syntax.split_and("a photo:2") == [("a photo", 2.0)]  # a weight without AND counts too
    assert prompt_syntax.split_and("(cat:1.2)") == [("(cat:1.2)", 1.0)]
    assert prompt_syntax.split_and("a [b:c:2] AND d") == [("a [b:c:2]", 1.0), (" d", 1.0)]
    assert prompt_syntax.split_and("") == [("", 1.0)]


def _is_subsequence(small: str, big: str) -> bool:
    it = iter(big)
    return all(c in it for c in small)


SYNTAX = st.lists(st.sampled_from(list("()[]:|\\ ,ab\n") + ["BREAK", "AND", "0.5", "2", "<lora:x:1>"]),
                  max_size=30).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60), SYNTAX), st.integers(1, 40))
def test_parsers_never_raise_and_only_select_text(prompt, steps):
    for sub, weight in prompt_syntax.split_and(prompt):
        assert isinstance(weight, float)
        schedule = prompt_syntax.prompt_schedule(sub, steps)
        ends = [end for end, _ in schedule]
        assert ends == sorted(set(ends)) and ends[-1] == steps and ends[0] >= 1
        for _, text in schedule:
            assert _is_subsequence(text, sub)  # editing only ever drops characters
            for seg in prompt_syntax.parse_attention(text):
                assert seg is prompt_syntax.BREAK or _is_subsequence(seg[0], text)
    parsed = extra_networks.parse(prompt)
    assert "<lora:x:1>" not in parsed.text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(exclude_characters="()[]:|\\<"), max_size=60), st.integers(1, 30))
def test_text_without_syntax_is_unchanged(text, steps):
    assert prompt_syntax.prompt_schedule(text, steps) == [(steps, text)]
    segs = prompt_syntax.parse_attention(text)
    assert all(s is prompt_syntax.BREAK or s[1] == 1.0 for s in segs)
    if "BREAK" not in text:
        assert segs == [(text, 1.0)]


NESTED = st.recursive(
    st.sampled_from(["a", "b ", "(c:1.2)", "", "x y"]),
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=4).map(lambda xs: "[" + "|".join(xs) + "]"),
        st.tuples(inner, inner, st.sampled_from(["2", "0.3", "7", "0", "-1", "1e1", "0.9"])).map(
            lambda t: f"[{t[0]}:{t[1]}:{t[2]}]"),
        st.lists(inner, min_size=2, max_size=3).map(" ".join)),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(NESTED, SYNTAX), st.integers(1, 60))
def test_schedule_is_the_text_at_each_step(prompt, steps):
    """The schedule makes each different text once (steps that agree on every edit and alternation share it);
    the texts are what A1111 would make step by step."""
    schedule = prompt_syntax.prompt_schedule(prompt, steps)
    try:
        tree = prompt_syntax._ScheduleParser(prompt).parse()
    except prompt_syntax._NoMatch:
        assert schedule == [(steps, prompt)]
        return
    assert schedule == [(end, prompt_syntax._text_at(tree, end, Timeline(steps))) for end, _ in schedule]
    by_text = {}
    for _, text in schedule:
        assert by_text.setdefault(text, text) is text  # equal texts are one string


def test_an_alternating_prompt_is_not_copied_for_every_step():
    """The security review's case, at the length limit: `[a|b]` and 65530 more characters at 1000 steps made
    1000 copies (62 MiB; 3 s for a prompt of 13000 alternations); now two texts, each made once."""
    import tracemalloc
    prompt = "[a|b] " + "x" * (prompt_syntax.MAX_PROMPT_CHARS - 6)
    tracemalloc.start()
    try:
        schedule = prompt_syntax.prompt_schedule(prompt, 1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(schedule) == 1000 and len({id(text) for _, text in schedule}) == 2
    assert peak < 4 * prompt_syntax.MAX_PROMPT_CHARS * 4  # a few texts, not 1000
    many = prompt_syntax.prompt_schedule("[a|b]" * (prompt_syntax.MAX_PROMPT_CHARS // 5), 1000)
    assert len({id(text) for _, text in many}) == 2


def test_prompt_texts_have_a_length_limit():
    limit = prompt_syntax.MAX_PROMPT_CHARS
    assert limit == 65536
    assert prompt_syntax.length_problem("prompt", "x" * limit) is None
    assert prompt_syntax.length_problem("prompt", "x" * 70000) == "prompt: 70000 characters; at most 65536"
    for field in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
        GenerationParams(**{field: "x" * limit})
        with pytest.raises(ValidationError) as e:
            GenerationParams(**{field: "x" * (limit + 1)})
        assert describe_validation_error(e.value) == f"{field}: {limit + 1} characters; at most {limit}"


def test_styles_may_not_make_a_prompt_longer_than_the_limit():
    """A style with `{prompt}` twice doubles the prompt each time it is listed: 40 times would be 2^40 times
    as long. The length is worked out before the text is made."""
    doubling = styles.PromptStyle("twice", "{prompt} {prompt}", "")
    with pytest.raises(styles.TooLong, match="prompt: 90111 characters with style 'twice' merged in; "
                                             "at most 65536"):
        styles.apply([doubling] * 40, "a" * 10, "", max_chars=prompt_syntax.MAX_PROMPT_CHARS)
    tail = styles.PromptStyle("tail", "masterpiece", "blurry")
    with pytest.raises(styles.TooLong, match="negative_prompt: 65543 characters with style 'tail'"):
        styles.apply([tail], "a cat", "x" * 65535, max_chars=prompt_syntax.MAX_PROMPT_CHARS)
    assert styles.apply([doubling, tail], "a cat", "", max_chars=100) == ("a cat a cat, masterpiece", "blurry")
    for style_text, prompt in (("{prompt} {prompt}", "ab"), ("x", ""), ("", "  a "), (" x ", " y "), ("", "")):
        assert styles.merged_length(style_text, prompt) == len(styles.merge(style_text, prompt))


# --- extra networks --------------------------------------------------------------------------------

def test_extra_network_tags_are_removed_and_collected():
    parsed = extra_networks.parse("a cat <lora:detail_tweaker:0.8>, <hypernet:anime:1> <lora:x:te=0.5:unet=1>!")
    assert parsed.text == "a cat ,  !"
    assert [(t.kind, t.args) for t in parsed.tags] == [
        ("lora", ("detail_tweaker", "0.8")), ("hypernet", ("anime", "1")), ("lora", ("x", "te=0.5", "unet=1"))]
    assert parsed.tags[2].positional == ["x"] and parsed.tags[2].named == {"te": "0.5", "unet": "1"}
    assert [t.text for t in parsed.by_kind()["lora"]] == ["<lora:detail_tweaker:0.8>", "<lora:x:te=0.5:unet=1>"]
    assert extra_networks.parse("<not a tag> <lora:> <lora x:1> a<b").text == "<not a tag> <lora:> <lora x:1> a<b"
    assert extra_networks.unsupported_warnings(parsed.tags) == []  # LoRA and hypernetworks are supported
    warnings = extra_networks.unsupported_warnings(extra_networks.parse("<lora:a:1> <wildcard:anime:1>").tags)
    assert len(warnings) == 1 and "<wildcard:anime:1>" in warnings[0] and "not supported" in warnings[0]


# --- chunking with weights and BREAK ---------------------------------------------------------------

def test_chunks_carry_weights_across_the_comma_backtrack():
    first = list(range(1000, 1070)) + [COMMA]  # 71 tokens at 1.0
    second = list(range(2000, 2010))  # 10 tokens at 1.5: the chunk fills at 75, 4 of them move on
    chunks = build_chunks([(first, 1.0), (second, 1.5)], COMMA)
    assert [len(c.ids) for c in chunks] == [71, 10]
    assert chunks[0].weights == [1.0] * 71 and chunks[1].ids == second and chunks[1].weights == [1.5] * 10
    assert [len(c.ids) for c in build_chunks([([5] * 160, 0.9)], COMMA)] == [75, 75, 10]
    # A1111's comma_padding_backtrack: the comma 5 tokens before the end is too far for 4, and 0 turns it off
    assert [len(c.ids) for c in build_chunks([(first, 1.0), (second, 1.5)], COMMA, 4)] == [75, 6]
    assert [len(c.ids) for c in build_chunks([(first, 1.0), (second, 1.5)], COMMA, 0)] == [75, 6]
    assert [len(c.ids) for c in build_chunks([(first, 1.0), (second, 1.5)], COMMA, 5)] == [71, 10]


def test_break_chunking():
    def lengths(*segments):
        return [len(c.ids) for c in build_chunks(list(segments), COMMA)]
    assert lengths(([1, 2], 1.0), None, ([3], 1.0)) == [2, 1]
    assert lengths(([1, 2], 1.0), None) == [2]  # a trailing BREAK adds nothing
    assert lengths(None, ([3], 1.0)) == [0, 1]  # a leading one leaves an empty chunk
    assert lengths(([1], 1.0), None, None, ([3], 1.0)) == [1, 0, 1]
    assert lengths(([1] * 75, 1.0), None, ([3], 1.0)) == [75, 1]  # a full chunk is closed by BREAK, no empty one
    assert lengths(([1] * 80, 1.0), None, ([3], 1.0)) == [75, 5, 1]


# --- conditioning on the tiny models ---------------------------------------------------------------

@pytest.fixture(scope="module")
def sd1(tiny_dir, tmp_path_factory):
    """The tiny SD 1.x model, loaded through the ordinary loader."""
    data = tmp_path_factory.mktemp("prompt-sd1")
    shutil.copytree(tiny_dir, data / "models" / "Stable-diffusion")
    manager = make_manager(data)
    yield manager.get(manager.checkpoints.find("sd1.safetensors"))


def test_emphasis_multiplies_tokens_and_restores_the_mean(sd1):
    text = sd1.text
    prompt = "a (red:1.5) circle on [blue] ground"
    chunk = text.chunks(prompt)[0]
    red, blue = text.tokenize("red")[0], text.tokenize("blue")[0]
    assert chunk.weights[chunk.ids.index(red)] == 1.5 and chunk.weights[chunk.ids.index(blue)] == 1 / 1.1
    plain = text.encode("a red circle on blue ground")
    assert torch.equal(text.encode(prompt, emphasis="Ignore"), plain)  # same tokens, no weighting
    weights = torch.tensor([1.0] + chunk.weights + [1.0] * (CHUNK + 1 - len(chunk.weights)))
    weighted = plain * weights[:, None]
    assert torch.allclose(text.encode(prompt, emphasis="No norm"), weighted, rtol=1e-6, atol=1e-7)
    original = text.encode(prompt)
    assert torch.allclose(original, weighted * (plain.mean() / weighted.mean()), rtol=1e-6, atol=1e-7)
    assert abs(original.mean().item() - plain.mean().item()) < 1e-6 * plain.abs().mean().item()
    assert not torch.allclose(original, plain)
    # "None" reads the brackets as words
    literal = text.encode(prompt, emphasis="None")
    assert text.chunk_ids(prompt, emphasis="None")[0][:3] == [49406] + text.tokenize("a (")
    assert not torch.allclose(literal, plain)
    # a prompt without weights is untouched by every mode
    for mode in ("Original", "No norm", "Ignore", "None"):
        assert torch.equal(text.encode("a red circle on blue ground", emphasis=mode), plain)


def test_emphasis_mean_spans_the_schedule_batch(sd1):
    """A1111 encodes all texts of a prompt's schedule in one batch and restores the mean over it, each
    entry counted once (the alternation below shows "(a:1.5)" on 2 of 6 steps)."""
    text = sd1.text
    scheduled = text.encode_scheduled("[(a:1.5)|b|b]", 6)
    assert [end for end, _ in scheduled.entries] == [1, 2, 3, 4, 5, 6]
    za, zb = text.encode("a", emphasis="Ignore").double(), text.encode("b").double()
    wa = text.encode("(a:1.5)", emphasis="No norm").double()
    scale = torch.stack([za, zb, zb]).mean() / torch.stack([wa, zb, zb]).mean()
    assert torch.allclose(scheduled.at(0).context.double(), wa * scale, rtol=1e-5, atol=1e-5)
    assert torch.allclose(scheduled.at(2).context.double(), zb * scale, rtol=1e-5, atol=1e-5)
    per_text = za.mean() / wa.mean()  # what restoring each text's own mean would give instead
    assert (wa * per_text - wa * scale).abs().max() > 1e-3
    assert scheduled.at(0) is scheduled.at(4) and scheduled.at(2) is scheduled.at(3)  # encoded once per text


def test_break_and_long_prompts_set_the_chunk_count(sd1):
    text = sd1.text
    assert text.encode("a red circle BREAK a blue square").shape == (2 * 77, 32)
    assert text.encode("a red circle BREAK a blue square", emphasis="None").shape == (77, 32)
    rows = text.chunk_ids("a red circle BREAK a blue square")
    assert rows[1][:5] == [49406] + text.tokenize("a blue square") + [49407]
    # the second chunk is encoded on its own: equal to that text's single chunk
    assert torch.allclose(text.encode("a red circle BREAK a blue square")[77:], text.encode("a blue square"))
    long = ", ".join(["a (red:1.2) circle on a blue background"] * 10)
    n = len(text.chunks(long))
    assert n >= 2 and text.encode(long).shape == (77 * n, 32)
    assert len(text.chunks(long + " BREAK x")) == n + 1
    # scheduled texts of different lengths share the chunk count (the short one padded with empty chunks)
    long = long.replace("(red:1.2)", "red")
    scheduled = text.encode_scheduled(f"[{long}:short:2]", 4)
    assert {c.context.shape for _, c in scheduled.entries} == {(77 * n, 32)}
    assert torch.allclose(scheduled.at(3).context[:77], text.encode("short"), rtol=1e-5, atol=1e-5)
    assert torch.allclose(scheduled.at(3).context[77:154], text.encode(""), rtol=1e-5, atol=1e-5)


def test_clip_skip_still_applies(sd1):
    a, b = sd1.text.encode("a (red:1.3) circle"), sd1.text.encode("a (red:1.3) circle", clip_skip=2)
    assert a.shape == b.shape and not torch.allclose(a, b)


class ContextRecorder:
    """Records the cross-attention input of every U-Net call (a forward pre-hook on the diffusers U-Net)."""

    def __init__(self, unet):
        self.contexts: list[torch.Tensor] = []
        self.handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, _args, kwargs):
        self.contexts.append(kwargs["encoder_hidden_states"].detach().clone())

    def close(self):
        self.handle.remove()


def _sample(model, cond, uncond, steps, sampler="Euler", cfg=7.0, seed=5):
    gens = rng.create_generators([seed], "CPU", torch.device("cpu"))
    noise = rng.initial_noise(gens, (4, 8, 8), torch.device("cpu"))
    denoiser = pipeline.Denoiser(model, cond, uncond, cfg)
    recorder = ContextRecorder(model.unet)
    try:
        with torch.no_grad():
            x = pipeline.sample(model, denoiser, noise, samplers.resolve(sampler), steps, gens, pipeline.Hooks())
    finally:
        recorder.close()
    return x, recorder.contexts


def _which(context: torch.Tensor, candidates: dict[str, torch.Tensor]) -> str:
    """The name of the candidate the context equals (to float rounding: a batch may round differently)."""
    found = [name for name, c in candidates.items() if torch.allclose(context, c, rtol=1e-5, atol=1e-5)]
    assert len(found) == 1, "the context is none (or several) of the expected conditionings"
    return found[0]


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DDIM"])
def test_denoiser_switches_conditioning_at_the_scheduled_step(sd1, sampler):
    """`[red:blue:2]` over 6 steps: A1111's denoiser counts its calls from 0 and uses the first text
    whose end step is >= the count, so calls 0-2 see "red" and 3-5 "blue"; the negative prompt
    `[ugly:pretty:4]` switches after call 4. Each call's batch is [cond, uncond]."""
    text = sd1.text
    cond = text.encode_prompt("a [red:blue:2] circle", 6)
    uncond = text.encode_scheduled("[ugly:pretty:4]", 6)
    names = {"red": text.encode("a red circle"), "blue": text.encode("a blue circle"),
             "ugly": text.encode("ugly"), "pretty": text.encode("pretty")}
    _, contexts = _sample(sd1, cond, uncond, 6, sampler)
    assert len(contexts) == 6 and all(c.shape == (2, 77, 32) for c in contexts)
    assert [_which(c[0], names) for c in contexts] == ["red"] * 3 + ["blue"] * 3
    assert [_which(c[1], names) for c in contexts] == ["ugly"] * 5 + ["pretty"]


def test_denoiser_alternates_and_applies_fractions(sd1):
    text = sd1.text
    names = {w: text.encode(f"a {w} circle") for w in ("red", "blue", "green")}
    _, contexts = _sample(sd1, text.encode_prompt("a [red|blue] circle", 5), text.encode_scheduled("", 5), 5)
    # the schedule for steps 1..5 is red, blue, red, blue, red; call i uses entry i (0-based: call 0 and 1
    # both fall in the first entry), exactly A1111's counter
    assert [_which(c[0], names) for c in contexts] == ["red", "red", "blue", "red", "blue"]
    _, contexts = _sample(sd1, text.encode_prompt("a [red:green:0.5] circle", 10), text.encode_scheduled("", 10), 10)
    assert [_which(c[0], names) for c in contexts] == ["red"] * 6 + ["green"] * 4


def test_and_combines_sub_prompts_with_weights(sd1):
    """uncond + sum_j (cond_j - uncond) * (w_j * cfg), computed here from separate U-Net calls."""
    text = sd1.text
    cond = text.encode_prompt("a red circle :1.5 AND a blue square :-0.5", 4)
    assert [w for _, w in cond.parts] == [1.5, -0.5]
    c1, c2, u = text.encode("a red circle"), text.encode("a blue square"), text.encode("blurry")
    assert torch.equal(cond.parts[0][0].at(0).context, c1)  # one text each
    assert torch.equal(cond.parts[1][0].at(0).context, c2)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500.0)
    denoiser = pipeline.Denoiser(sd1, cond, text.encode_scheduled("blurry", 4), 6.0)
    recorder = ContextRecorder(sd1.unet)
    with torch.no_grad():
        got = denoiser(x, t)
    recorder.close()
    # one batch: image 0's two sub-prompts, image 1's two, then the two unconds
    assert len(recorder.contexts) == 1
    batch = recorder.contexts[0]
    assert [_which(c, {"c1": c1, "c2": c2, "u": u}) for c in batch] == ["c1", "c2", "c1", "c2", "u", "u"]

    def unet(context):
        return sd1.unet(x, t.expand(2), encoder_hidden_states=context.expand(2, -1, -1)).sample
    with torch.no_grad():
        e1, e2, eu = unet(c1), unet(c2), unet(u)
    expected = eu + (e1 - eu) * (1.5 * 6.0) + (e2 - eu) * (-0.5 * 6.0)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    # a plain prompt is the ordinary CFG
    plain = pipeline.Denoiser(sd1, text.encode_prompt("a red circle", 4), text.encode_scheduled("blurry", 4), 6.0)
    with torch.no_grad():
        assert torch.allclose(plain(x, t), eu + 6.0 * (e1 - eu), rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_and_sub_prompts_of_different_lengths_and_a_negative_never_split(sd1):
    text = sd1.text
    long = ", ".join(["a red circle on a blue background"] * 10)
    cond = text.encode_prompt(f"{long} AND a dog", 3)
    uncond = text.encode_scheduled("cat AND dog", 3)  # the negative prompt is one text, AND included
    assert torch.equal(uncond.at(0).context, text.encode("cat AND dog"))
    _, contexts = _sample(sd1, cond, uncond, 3)
    n = len(text.chunks(long))
    # sub-prompts stacked, the short one padded with its last vector; the uncond in its own call
    assert [c.shape[:2] for c in contexts] == [(2, 77 * n), (1, 77)] * 3
    padded = contexts[0][1]
    assert torch.allclose(padded[:77], text.encode("a dog"))
    assert torch.equal(padded[77:], padded[76:77].expand(77 * (n - 1), -1))


# --- end to end through the engine -----------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(tiny_dir, tmp_path_factory):
    data = tmp_path_factory.mktemp("prompt-engine")
    shutil.copytree(tiny_dir, data / "models" / "Stable-diffusion")
    e = make_engine(data)
    yield e
    e.queue.stop()


def gen(engine, prompt, **kw):
    base = dict(prompt=prompt, negative_prompt="", width=64, height=64, steps=6, sampler_name="Euler a", seed=42,
                save_images=False)
    return engine.txt2img(GenerationParams(**{**base, **kw}))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=int)


def test_scheduled_prompt_image_differs_from_both_fixed_prompts_and_is_deterministic(engine):
    early = gen(engine, "a [red circle:blue square:1]")
    late = gen(engine, "a [red circle:blue square:3]")
    again = gen(engine, "a [red circle:blue square:3]")
    first, second = gen(engine, "a red circle"), gen(engine, "a blue square")
    assert late.images[0].tobytes() == again.images[0].tobytes()
    assert late.infotexts[0].startswith("a [red circle:blue square:3]\n")
    for scheduled in (early, late):
        assert scheduled.images[0].tobytes() not in (first.images[0].tobytes(), second.images[0].tobytes())
    # the later the switch, the closer to the first prompt's image (the early steps shape it most)
    distance = np.abs(pixels(first) - pixels(second)).mean()
    assert distance > np.abs(pixels(early) - pixels(first)).mean() > np.abs(pixels(late) - pixels(first)).mean() > 0


def test_extra_network_tags_are_stripped_and_warned(engine):
    tagged = gen(engine, "a red circle <lora:detail:0.8> <hypernet:h:1>")
    plain = gen(engine, "a red circle")
    assert tagged.images[0].tobytes() == plain.images[0].tobytes()  # the tags never reach the encoder
    assert tagged.infotexts[0].startswith("a red circle <lora:detail:0.8> <hypernet:h:1>\n")
    assert [w for w in tagged.warnings if "<lora:detail:0.8>" in w or "<hypernet:h:1>" in w] == tagged.warnings
    assert len(tagged.warnings) == 2 and tagged.info["warnings"] == tagged.warnings
    assert plain.warnings == []


def test_emphasis_setting_changes_the_image_and_the_infotext(engine):
    original = gen(engine, "a (red:1.6) circle")
    assert "Emphasis" not in original.infotexts[0]
    results = {}
    for mode in ("Ignore", "No norm", "None"):
        results[mode] = gen(engine, "a (red:1.6) circle", override_settings={"emphasis": mode})
        assert f"Emphasis: {mode}, Version" in results[mode].infotexts[0]
        assert results[mode].images[0].tobytes() != original.images[0].tobytes()
    assert results["Ignore"].images[0].tobytes() == gen(engine, "a red circle").images[0].tobytes()
    # A1111 notes the mode only when a text the encoder sees has a bracket
    assert "Emphasis" not in gen(engine, "a red circle", override_settings={"emphasis": "Ignore"}).infotexts[0]
    assert engine.options.values.emphasis == "Original"


# A1111 v1.10's get_learned_conditioning_prompt_schedules (modules/prompt_parser.py), worked by hand: new timelines,
# first pass: N with "." -> int(N * steps), else N; hires pass (hires_steps given): int((N - 1) * hr_steps) or
# int(N - first_steps), each capped at the pass's steps and dropped under 1; old (use_old_scheduling): N < 1 ->
# int(N * steps), else int(N), in the first pass's steps for both passes. A second-order sampler's steps count twice
# (sd_samplers_common.SamplerData.total_steps).
@pytest.mark.parametrize("prompt,timeline,expected", [
    ("a [b:c:0.5] d", Timeline(20), [(10, "a b d"), (20, "a c d")]),
    ("[b:c:0.5]", Timeline(samplers.resolve("Heun", None).spec.total_steps(20)), [(20, "b"), (40, "c")]),
    ("[b:c:5]", Timeline(samplers.resolve("Heun", None).spec.total_steps(20)), [(5, "b"), (40, "c")]),
    ("[b:c:1.5]", Timeline(20), [(20, "b")]),  # 30 capped at 20: b throughout
    ("[b:c:1.5]", Timeline(20, old=True), [(1, "b"), (20, "c")]),  # old: 1.5 >= 1 is a step number
    ("[b:c:0.5]", Timeline.hires(20, 10), [(10, "c")]),  # the edit was in the first pass: c throughout
    ("[b:c:15]", Timeline.hires(20, 10), [(10, "c")]),
    ("[b:c:25]", Timeline.hires(20, 10), [(5, "b"), (10, "c")]),  # counts on from the first pass's 20
    ("[b:c:1.5]", Timeline.hires(20, 10), [(5, "b"), (10, "c")]),  # fractions from 1 to 2 span the hires pass
    ("[b:c:2.0]", Timeline.hires(20, 10), [(10, "b")]),
    ("[b:c:0.5]", Timeline.hires(20, 10, old=True), [(10, "b"), (20, "c")]),  # old: the first pass's steps
    ("[x|y] [b:c:22]", Timeline.hires(20, 4), [(1, "x b"), (2, "y b"), (3, "x c"), (4, "y c")]),
])
def test_timelines_follow_a1111(prompt, timeline, expected):
    assert prompt_syntax.prompt_schedule(prompt, timeline) == expected


def test_an_int_is_the_first_pass_timeline():
    assert prompt_syntax.prompt_schedule("[b:c:0.5]", 8) == prompt_syntax.prompt_schedule("[b:c:0.5]", Timeline(8))


@pytest.mark.parametrize("prompt, problems", [
    ("a (red:1.2) [cat] {dog}", []),
    ("a ((red) cat", ["round brackets ( ): 2 opening, 1 closing"]),
    ("a [red:blue:0.5 cat", ["square brackets [ ]: 1 opening, 0 closing"]),
    ("a {red|blue}} cat (", ["round brackets ( ): 1 opening, 0 closing", "curly brackets { }: 1 opening, 2 closing"]),
    (r"a \(literal\) \[x] cat", ["square brackets [ ]: 0 opening, 1 closing"]),  # escaped ones are text
    (r"a \\(red) cat", []),  # an escaped backslash escapes nothing after it
])
def test_bracket_problems_count_unescaped_brackets_of_each_kind(prompt, problems):
    """A1111's prompt bracket checker counts each kind's opening and closing brackets; ours leaves escaped ones out,
    since the prompt parser reads them as text."""
    assert prompt_syntax.bracket_problems(prompt) == problems
