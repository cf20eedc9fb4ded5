"""Hardening against hostile or broken input: a long infotext, callback redirects, numbers no generator or
encoder can use, refused and zip-bomb checkpoints. Each is refused with a 4xx naming the field, or read
within a bound, and the server keeps serving."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import requests
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from modules import infotext, prompt_syntax
from modules.api.job_routes import callback_problem, normal_hosts
from modules.engine import BadRequest
from modules.generation import rng
from modules.generation.params import GenerationParams
from modules.models import checkpoint_file
from modules.models.checkpoint_file import CheckpointError
from modules.settings import Settings
from tests.support.engine import make_engine
from tests.support.server import start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
LARGEST_SEED = 2**64 - 1

# --- 4. The infotext parser: A1111's pairs, in linear time, at most 64 KB read ----------------------------

A1111_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_parse(text: str) -> dict:
    """The parser as it was (A1111's `parse_generation_parameters` layout, its regex with findall)."""
    lines = text.strip().split("\n")
    result: dict = {}
    last = lines[-1] if lines else ""
    matches = A1111_PARAM_RE.findall(last)
    if len(matches) >= 3:
        lines = lines[:-1]
    else:
        matches = []
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].lstrip()
        (negative if in_negative else prompt).append(line)
    result["Prompt"] = "\n".join(prompt)
    result["Negative prompt"] = "\n".join(negative)
    for key, value in matches:
        key, value = key.strip(), infotext.unquote(value.strip())
        result[key] = value
        if m := infotext.SIZE_RE.match(value):
            result[f"{key}-1"], result[f"{key}-2"] = m.group(1), m.group(2)
    return result


# The characters the regex treats differently: word characters (ASCII, accented, an Arabic-Indic digit),
# the other key characters (space - /), whitespace that is not a space (tab, CR, no-break space, U+001C),
# and the separators and quoting (, : " \).
ALPHABET = list('ab_1é٣ -/\t\r\u00a0\x1c,:"\\') + [", ", ": ", '\\"', '"a, b"', "Steps", "Size: 512x768", "x"]
lines = st.lists(st.sampled_from(ALPHABET), max_size=40).map("".join)
keys = st.from_regex(r"[A-Za-z][A-Za-z0-9 _/\-]{0,10}", fullmatch=True)
values = st.one_of(st.integers(-10**20, 10**20),
                   st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False), lines, st.just("512x768"))


@settings(max_examples=400, deadline=None)
@given(lines)
def test_param_pairs_are_a1111s_regex_findall(line):
    assert infotext.param_pairs(line) == A1111_PARAM_RE.findall(line)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET + ["\n", "Negative prompt: "]), max_size=12).map("".join),
       st.text(max_size=20), st.dictionaries(keys, values, max_size=8), lines)
def test_parse_reads_infotexts_as_before(prompt, negative, fields, tail):
    """Generated infotexts (and ones with an arbitrary last line) give what the old parser gave."""
    text = infotext.create(prompt, negative, fields)
    assert infotext.parse(text) == a1111_parse(text)
    assert infotext.param_pairs(text.split("\n")[-1]) == A1111_PARAM_RE.findall(text.split("\n")[-1])
    assert infotext.parse(text + "\n" + tail) == a1111_parse(text + "\n" + tail)


def test_parser_reads_long_and_pathological_lines_at_once():
    """The regex's findall took 40 s on a 64 KB run of key characters without a colon, and would take days on
    5 MB (quadratic); the parser must read them at once. The work runs in a child process so that a hang
    fails the test (the deadline only detects a hang: all of it takes about 3 s now)."""
    script = """
from modules import infotext, prompt_syntax
n = 5 * 1024 * 1024
lines = ("a" * n, ("ab " * n)[:n], ("Ke y: v, " * n)[:n], ('ke: "x\\\\", ' * n)[:n], ("ab cd, " * n)[:n])
for line in lines:
    infotext.parse("a prompt\\n" + line)  # reads 64 KB of it
    infotext.parse(line[:64 * 1024])
for line in lines:  # the whole line, not cut: linear time
    infotext.param_pairs(line)
print(len(infotext.param_pairs(lines[2])))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == str(5 * 1024 * 1024 // 9)  # every whole "Ke y: v, "


def test_long_infotext_is_cut_keeping_its_parameter_line(caplog):
    params = "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x768"
    text = "p" * 200_000 + "\nNegative prompt: n\n" + params
    with caplog.at_level("WARNING", logger="modules.infotext"):
        parsed = infotext.parse(text)
    assert parsed["Steps"] == "20" and parsed["Size-2"] == "768" and parsed["Seed"] == "5"
    assert parsed["Prompt"] == "p" * (infotext.MAX_CHARS - len(params) - 1) and parsed["Negative prompt"] == ""
    assert f"{len(text)} characters" in caplog.text and "the end of its prompt was ignored" in caplog.text
    # a text that is one huge line: its first 64 KB are read
    assert infotext.parse("q" * 100_000)["Prompt"] == "q" * infotext.MAX_CHARS
    assert infotext.cut("short") == ("short", None)


def test_pasted_infinite_or_nan_numbers_are_value_errors():
    for value in ("inf", "-inf", "nan", "1e400"):
        with pytest.raises(ValueError, match="Seed"):
            infotext.request_values(infotext.parse(f"x\nSteps: 2, Seed: {value}, Sampler: Euler"),
                                    infotext.REQUEST_FIELDS)


# --- 6. Callback URLs ------------------------------------------------------------------------------------

def test_callback_urls_that_urllib_would_read_differently_are_refused():
    hosts = ["127.0.0.1"]
    assert callback_problem("http://127.0.0.1:8000/hook", hosts) is None
    assert callback_problem("http://Hooks.Example/x", normal_hosts([" Hooks.EXAMPLE "])) is None  # host case
    assert "malformed port" in callback_problem("http://127.0.0.1:99999/hook", hosts)
    assert "malformed port" in callback_problem("http://127.0.0.1:abc/hook", hosts)
    assert "not a valid URL" in callback_problem("http://[::1/hook", hosts)
    # urlsplit reads 127.0.0.1 as the host of these, urllib connects elsewhere
    for url in ("http://evil.example\\@127.0.0.1/x", "http://127.0.0.1@evil.example/", "http://127.0.0.1\t.evil/"):
        assert "not allowed in it" in callback_problem(url, hosts)
    assert "not allowed" in callback_problem("http://127.0.0.2/hook", hosts)


# --- 7. Numbers no generator, sampler or encoder can use -------------------------------------------------

def test_seed_limits_are_the_generators():
    assert rng.seed_problem(LARGEST_SEED, -1, 0, 1) is None  # A1111 and torch take it
    assert rng.seed_problem(-1, 2**70, 0, 4) is None  # a variation seed without strength is never used
    assert rng.seed_problem(2**64, -1, 0, 1).startswith("seed: ")
    assert rng.seed_problem(LARGEST_SEED, -1, 0, 2).startswith("seed: ")  # its second image would be 2^64
    assert rng.seed_problem(5, 2**70, 0.5, 1).startswith("subseed: ")
    assert rng.seed_problem(-1, -1, 0, 1, ensd=LARGEST_SEED).startswith("eta_noise_seed_delta: ")
    assert rng.seed_problem(3, -1, 0, 1, ensd=LARGEST_SEED - 3) is None


@pytest.mark.parametrize("field", ["eta", "s_noise", "s_churn", "s_tmin", "s_tmax", "cfg_scale", "subseed_strength"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_generation_params_refuse_nan_and_infinity(field, value):
    with pytest.raises(ValueError, match=f"{field}[\\s\\S]*finite"):
        GenerationParams(**{field: value})


@pytest.mark.parametrize("field", ["sigma_max", "sigma_min", "rho", "eta_ancestral", "s_noise", "s_churn",
                                   "initial_noise_multiplier"])
def test_settings_refuse_nan_and_infinity(field):
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"{field}[\\s\\S]*finite"):
            Settings(**{field: value})
    with pytest.raises(ValueError, match="eta_noise_seed_delta"):
        Settings(eta_noise_seed_delta=10**30)


def test_prompts_whose_weights_cannot_be_encoded():
    assert prompt_syntax.prompt_problem("a (b) ((c:1.3)) [d] e:1.2 AND f", 20) is None
    assert prompt_syntax.prompt_problem("(a" * prompt_syntax.MAX_NESTING, 20) is None
    for bad in ("(a" * 20000, "(" * 2000 + "a" + ")" * 2000, "(" * 2000 + "a" + ":1.5)" * 2000,
                "[a" * (prompt_syntax.MAX_NESTING + 1)):
        assert "nested more than" in prompt_syntax.prompt_problem(bad, 20)
    assert "too large" in prompt_syntax.prompt_problem("(a:" + "9" * 40 + ")", 20)  # 1e40: infinity in float32
    assert "AND" in prompt_syntax.prompt_problem("a :" + "9" * 400 + " AND b", 20)  # a weight of inf
    assert prompt_syntax.prompt_problem("(a" * 20000, 20, emphasis="None") is None  # brackets are text then
    # the parser itself never raises, and reads brackets past the limit as text
    deep = prompt_syntax.parse_attention("(" * 150 + "a" + ")" * 150)
    assert deep == [("(" * 50 + "a" + ")" * 50, pytest.approx(1.1 ** 100))]


def test_a_refused_pickle_names_the_python3_callable(tmp_path):
    class Payload:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": Payload()}, tmp_path / "evil.ckpt")  # protocol 2
    with pytest.raises(CheckpointError, match="'builtins.eval'"):
        checkpoint_file.read_state_dict(tmp_path / "evil.ckpt")
    torch.save({"x": Payload()}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="'builtins.eval'"):
        checkpoint_file.read_state_dict(tmp_path / "legacy.ckpt")
    assert checkpoint_file.pickle_globals(tmp_path / "legacy.ckpt") == ["builtins.eval"]


def test_sampler_overflow_is_refused_naming_the_setting_not_precision(data_dir):
    """A finite but huge sigma_max overflows the sampler's numbers: the error says so and names the setting,
    where it used to blame the precision and advise --no-half, or the weights (1e20: the U-Net is given a finite
    latent whose squares overflow inside it; 1e25: the latent itself overflows)."""
    engine = make_engine(data_dir)
    try:
        for sigma_max in (1e20, 1e25):
            job = engine.submit_txt2img(GenerationParams(
                prompt="a", width=64, height=64, steps=3, sampler_name="Euler a", scheduler="Karras",
                override_settings={"sigma_max": sigma_max}))
            with pytest.raises(BadRequest) as e:
                job.wait()
            assert f"sigma_max={sigma_max:g}" in str(e.value) and "--no-half will not help" in str(e.value)
    finally:
        engine.queue.stop()


# --- 8. Zip-bomb checkpoints -----------------------------------------------------------------------------

BOMB = 256 << 20  # bytes a member expands to (the file stays about 256 KB)


def refused_pickle() -> bytes:
    class Payload:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    buf = io.BytesIO()
    torch.save({"x": Payload()}, buf)
    return buf.getvalue()


def zip_bomb(path: Path, tail: bytes = b"") -> Path:
    """A torch checkpoint whose data.pkl (a refused pickle) is followed by `tail` and BOMB zero bytes,
    deflated."""
    src = zipfile.ZipFile(io.BytesIO(refused_pickle()))
    with zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if not info.filename.endswith("data.pkl"):
                out.writestr(info, data)
                continue
            member = zipfile.ZipInfo(info.filename)
            member.compress_type = zipfile.ZIP_DEFLATED
            with out.open(member, "w", force_zip64=True) as w:
                w.write(data + tail)
                zeros = bytes(1 << 20)
                for _ in range(BOMB >> 20):
                    w.write(zeros)
    return path


def test_pickle_scan_reads_members_within_a_byte_budget(tmp_path):
    """`pickle_globals` read every .pkl member fully (twice over, with a copy): now it streams them."""
    padded = zip_bomb(tmp_path / "padded.ckpt")
    # the padding is no pickle; a BINBYTES8 opcode asking for the whole member is one
    asking = zip_bomb(tmp_path / "asking.ckpt", tail=b"\x8e" + struct.pack("<Q", BOMB))
    tracemalloc.start()
    try:
        assert checkpoint_file.pickle_globals(padded) == ["builtins.eval"]
        with pytest.raises(CheckpointError, match="larger than"):
            checkpoint_file.pickle_globals(asking)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < checkpoint_file.PICKLE_LIMIT + (16 << 20), peak


def test_zip_bomb_ckpt_is_refused_before_it_is_read(tmp_path):
    """Peak memory of refusing it, measured in a child process: torch.load expanded data.pkl, then the
    refusal's scan read it again (+2.1 GB for a 1 GiB member)."""
    bomb = zip_bomb(tmp_path / "bomb.ckpt")
    script = f"""
import resource
from pathlib import Path
from modules.models import checkpoint_file
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    checkpoint_file.read_state_dict(Path({str(bomb)!r}))
    print("loaded")
except checkpoint_file.CheckpointError as e:
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024, str(e))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    grown_mb, message = done.stdout.strip().split(" ", 1)
    assert int(grown_mb) < 64, done.stdout
    assert "zip bomb" in message and "data.pkl" in message and "256.0 MiB" in message, message


# --- Over HTTP: one live server ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dir):
    data = tmp_path_factory.mktemp("hardening")
    models = data / "models" / "Stable-diffusion"
    shutil.copytree(tiny_dir, models)
    (models / "evil.ckpt").write_bytes(refused_pickle())
    ckpt = (tiny_dir / "sd1-ckpt.ckpt").read_bytes()
    (models / "cut.ckpt").write_bytes(ckpt[: len(ckpt) // 2])
    (data / "config.json").write_text(json.dumps({"sd_model_checkpoint": "sd1.safetensors"}))
    proc, url = start_server(data, "--api", "--api-callback-hosts", "127.0.0.1")
    yield url
    stop_server(proc)


SMALL = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler a"}


def post_raw(url: str, path: str, body: dict, timeout: float = 120) -> requests.Response:
    """JSON with NaN / Infinity written as Python's json does (requests refuses to send them)."""
    return requests.post(url + path, data=json.dumps(body), headers={"Content-Type": "application/json"},
                         timeout=timeout)


def assert_refused(r: requests.Response, field: str, status: tuple[int, ...] = (400,)) -> None:
    assert r.status_code in status, (r.status_code, r.text[:500])
    assert field in r.text, r.text[:500]


@pytest.mark.server
def test_png_info_with_a_5mb_parameters_chunk_answers_at_once(server):
    url = server
    text = "a prompt\n" + "a" * (5 << 20)  # a last line of 5 MB of key characters and no colon
    meta = PngInfo()
    meta.add_text("parameters", text)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=meta)
    import base64
    r = requests.post(url + "/sdapi/v1/png-info", json={"image": base64.b64encode(buf.getvalue()).decode()},
                      timeout=120)
    assert r.status_code == 200, r.text[:300]
    body = r.json()
    assert body["info"] == text  # the stored text is answered as it is; only 64 KB of it is parsed
    assert body["parameters"]["Prompt"] == text[:infotext.MAX_CHARS]
    assert requests.get(url + "/sdapi/v1/options", timeout=10).status_code == 200  # still serving


@pytest.mark.server
def test_a_long_infotext_field_is_cut_with_a_warning(server):
    url = server
    long_line = ("ab " * 40000)[:100_000]
    r = post_raw(url, "/sdapi/v1/txt2img", {**SMALL, "seed": 3, "infotext": "a cat\n" + long_line})
    assert r.status_code == 200, r.text[:300]
    warnings = json.loads(r.json()["info"])["warnings"]
    assert any("100006 characters" in w for w in warnings), warnings


@pytest.mark.server
def test_callbacks_do_not_follow_redirects(server):
    url = server
    hits: dict[str, list] = {"allowed": [], "elsewhere": []}

    def handler(name: str, redirect: str | None):
        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                hits[name].append(self.command)
                if redirect:
                    self.send_response(int(self.path.strip("/")))
                    self.send_header("Location", redirect)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _any  # noqa: N815 (http.server's names)

            def log_message(self, *args):
                pass

        return Handler

    elsewhere = HTTPServer(("127.0.0.2", 0), handler("elsewhere", None))  # not in --api-callback-hosts
    allowed = HTTPServer(("127.0.0.1", 0), handler("allowed", f"http://127.0.0.2:{elsewhere.server_port}/stolen"))
    for s in (elsewhere, allowed):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        for code in (301, 302, 303):
            hook = f"http://127.0.0.1:{allowed.server_port}/{code}"
            r = requests.post(url + "/sdapi/v1/jobs", json={"request": {**SMALL, "seed": code},
                                                             "callback_url": hook}, timeout=60)
            assert r.status_code == 200, r.text
            deadline = time.time() + 120
            while len(hits["allowed"]) < [301, 302, 303].index(code) + 1 and time.time() < deadline:
                time.sleep(0.1)
        time.sleep(1.0)  # time for a followed redirect to arrive
        assert hits["allowed"] == ["POST"] * 3 and hits["elsewhere"] == []
    finally:
        allowed.shutdown()
        elsewhere.shutdown()
    for bad in ("http://127.0.0.1:99999/hook", "http://127.0.0.1:abc/hook", "http://127.0.0.1@example.com/"):
        r = requests.post(url + "/sdapi/v1/jobs", json={"request": SMALL, "callback_url": bad}, timeout=30)
        assert_refused(r, "callback_url")


@pytest.mark.server
@pytest.mark.parametrize("body, field", [
    ({"seed": 2**64}, "seed"), ({"seed": 10**30}, "seed"), ({"seed": LARGEST_SEED, "batch_size": 2}, "seed"),
    ({"subseed": 2**70, "subseed_strength": 0.5}, "subseed"),
    ({"override_settings": {"eta_noise_seed_delta": 10**30}}, "eta_noise_seed_delta"),
    ({"eta": float("nan")}, "eta"), ({"eta": float("inf")}, "eta"), ({"s_noise": float("nan")}, "s_noise"),
    ({"s_churn": float("inf")}, "s_churn"), ({"s_tmin": float("nan")}, "s_tmin"),
    ({"override_settings": {"sigma_max": float("inf")}}, "sigma_max"),
    ({"override_settings": {"rho": float("nan")}}, "rho"),
    ({"prompt": "(a" * 20000}, "prompt"), ({"prompt": "(" * 2000 + "a" + ":1.5)" * 2000}, "prompt"),
    ({"negative_prompt": "(" * 2000 + "a" + ")" * 2000}, "negative_prompt"),
    ({"infotext": "x\nSteps: 2, Sampler: Euler, Seed: 1e30"}, "seed"),
])
def test_bad_numbers_are_4xx_naming_the_field(server, body, field):
    url = server
    assert_refused(post_raw(url, "/sdapi/v1/txt2img", {**SMALL, **body}), field)
    r = post_raw(url, "/sdapi/v1/jobs", {"request": {**SMALL, **body}})
    assert_refused(r, field)


@pytest.mark.server
def test_bad_numbers_in_options_and_field_types_are_4xx(server):
    url = server
    before = requests.get(url + "/sdapi/v1/options", timeout=10).json()
    for key, value in (("sigma_max", float("inf")), ("rho", float("nan")), ("s_noise", float("nan")),
                       ("eta_noise_seed_delta", 10**30)):
        assert_refused(post_raw(url, "/sdapi/v1/options", {key: value}), key)
    assert requests.get(url + "/sdapi/v1/options", timeout=10).json() == before
    # an int field sent NaN: FastAPI's own 422, which echoes the value (it failed with a 500 doing so)
    assert_refused(post_raw(url, "/sdapi/v1/txt2img", {**SMALL, "steps": float("nan")}), "steps", (422,))
    assert_refused(post_raw(url, "/sdapi/v1/txt2img", {**SMALL, "steps": float("nan"), "eta": "x"}), "eta", (422,))
    assert_refused(post_raw(url, "/sdapi/v1/extra-single-image", {"image": "", "upscaling_resize": float("inf")}),
                   "upscaling_resize", (422,))


@pytest.mark.server
def test_what_a1111_accepts_keeps_working(server):
    url = server
    r = post_raw(url, "/sdapi/v1/txt2img", {**SMALL, "seed": LARGEST_SEED})
    assert r.status_code == 200, r.text[:300]
    info = json.loads(r.json()["info"])
    assert info["seed"] == LARGEST_SEED and f"Seed: {LARGEST_SEED}," in info["infotexts"][0]
    r = post_raw(url, "/sdapi/v1/txt2img", {**SMALL, "seed": 2**40, "subseed": 2**70, "batch_size": 2})
    assert r.status_code == 200, r.text[:300]
    assert json.loads(r.json()["info"])["all_seeds"] == [2**40, 2**40 + 1]


@pytest.mark.server
def test_refused_or_unreadable_checkpoints_asked_for_are_4xx(server):
    url = server
    r = post_raw(url, "/sdapi/v1/txt2img", {**SMALL, "override_settings": {"sd_model_checkpoint": "evil.ckpt"}})
    assert_refused(r, "override_settings.sd_model_checkpoint")
    assert "'builtins.eval'" in r.json()["detail"] and "evil.ckpt" in r.json()["detail"]
    r = post_raw(url, "/sdapi/v1/options", {"sd_model_checkpoint": "evil.ckpt"})
    assert_refused(r, "sd_model_checkpoint")
    assert "'builtins.eval'" in r.json()["detail"]
    r = post_raw(url, "/sdapi/v1/options", {"sd_model_checkpoint": "cut.ckpt"})
    assert_refused(r, "sd_model_checkpoint")
    assert "truncated or corrupt" in r.json()["detail"]
    selected = requests.get(url + "/sdapi/v1/options", timeout=10).json()["sd_model_checkpoint"]
    assert selected.startswith("sd1.safetensors")  # unchanged
    assert post_raw(url, "/sdapi/v1/txt2img", {**SMALL, "seed": 1}).status_code == 200
