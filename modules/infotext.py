"""Generation parameters as text, in AUTOMATIC1111's "infotext" layout:

    <prompt>
    Negative prompt: <negative prompt>          (omitted when empty)
    Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, ...

A value containing ',', ':' or a newline is written JSON-quoted. `parse` reads both ours and A1111's.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any, Sequence

log = logging.getLogger(__name__)

PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_WORD = re.compile(r"\w")
_KEY_RUN = re.compile(r"[\w \-/]*")

# The most characters of an infotext that are read (A1111 reads any length; a pasted or uploaded text of
# megabytes is no real infotext). Beyond it the prompt is cut, keeping the parameter line (see `cut`).
MAX_CHARS = 64 * 1024


def param_pairs(line: str) -> list[tuple[str, str]]:
    """`PARAM_RE.findall(line)` (A1111's parameter-line regex, the same pairs in the same order), in time
    linear in the line's length. findall tries a match at every position, and where a long run of key
    characters ([\\w \\-/]) is not followed by a colon it scans that run again from each of its positions:
    quadratic (64 KB took 40 s). But a match can only start, after its leading whitespace, at a word
    character, and every start inside a run that failed fails the same way (the run ends at the same
    character) or is a start at the run's end; so after a failure the search goes on from the run's end.
    A quoted value's scan never passes the opening quote of a later value, so values are read once."""
    pairs, pos = [], 0
    while (word := _WORD.search(line, pos)) is not None:
        m = PARAM_RE.match(line, word.start())
        if m:
            pairs.append(m.groups())
            pos = m.end()
        else:
            pos = _KEY_RUN.match(line, word.start()).end()
    return pairs


def cut(text: str) -> tuple[str, str | None]:
    """(`text`, None) when it is at most MAX_CHARS long; else what of it is read, and a warning. The
    parameter line (the last line) is kept when it is under half the limit and the prompt before it is
    cut to fit; otherwise only the first MAX_CHARS characters are read."""
    if len(text) <= MAX_CHARS:
        return text, None
    head, newline, last = text.rpartition("\n")
    if newline and len(last) < MAX_CHARS // 2:
        kept, what = head[:MAX_CHARS - len(last) - 1] + "\n" + last, "the end of its prompt was ignored"
    else:
        kept, what = text[:MAX_CHARS], "the rest was ignored"
    return kept, (f"infotext: {len(text)} characters, more than the {MAX_CHARS} that are read; "
                  f"{what}")


def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def quote(text: str) -> str:
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def create(prompt: str, negative_prompt: str, fields: dict[str, Any]) -> str:
    """Fields are written in the given order; None values are left out; a value equal to its key is written bare."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        text = format_value(value)
        parts.append(key if text == key else f"{key}: {quote(text)}")
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(parts)}".strip()


def parse(text: str) -> dict[str, Any]:
    """{"Prompt": ..., "Negative prompt": ..., key: value, ...}; `Size: 512x768` also gives Size-1 and Size-2.
    At most MAX_CHARS characters are read (see `cut`; a warning is logged)."""
    text, warning = cut(text.strip())
    if warning:
        log.warning("%s", warning)
    lines = text.split("\n")
    result: dict[str, Any] = {}
    last = lines[-1] if lines else ""
    matches = param_pairs(last)
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
        key, value = key.strip(), unquote(value.strip())
        result[key] = value
        if m := SIZE_RE.match(value):
            result[f"{key}-1"], result[f"{key}-2"] = m.group(1), m.group(2)
    return result


# What A1111's parser reports for keys an infotext leaves out (its defaults at the time the image was
# made), so a pasted infotext means the same here as there: no `Clip skip` means 1, no `RNG` means GPU.
IMPLIED_DEFAULTS: dict[str, Any] = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires schedule type": "Use same scheduler",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Refiner switch by sampling steps": False,
}

VERSION_RE = re.compile(r"v(\d+)\.(\d+)\.(\d+)(-RC)?(?:-(\d+))?")


def a1111_version(text: Any) -> tuple[int, int, int, int] | None:
    """(major, minor, patch, commits since the tag) of an A1111 `Version` value such as `v1.7.0-225-g...`;
    a release candidate (`v1.8.0-RC-12-g...`) comes before its release, whatever its commits (-1, as A1111's
    `parse_version` reads it: 1.8.0rc0). None for another program's version (no back-compat rules apply)."""
    m = VERSION_RE.match(str(text or ""))
    if m is None:
        return None
    return int(m[1]), int(m[2]), int(m[3]), -1 if m[4] else int(m[5] or 0)


def old_first_pass_size(width: int, height: int) -> tuple[int, int]:
    """The first pass of A1111's first hires fix, whose Width and Height were the final size: about 512x512
    pixels in the final picture's proportions, each side rounded up to a multiple of 64."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def restore_first_pass_size(parsed: dict[str, Any], old_hires_size: bool = False) -> None:
    """A1111's restore_old_hires_fix_params, in place: an infotext of the first hires fix gives `First pass size`
    (0x0: worked out from the final size) and the final size as `Size`; today's keys are the first pass as `Size`
    and the final size as `Hires resize`. With `old_hires_size` (the setting use_old_hires_fix_width_height,
    where Width and Height are the final size again) a `Hires resize` becomes the `Size` instead."""
    if old_hires_size:
        final = int(parsed.get("Hires resize-1", 0)), int(parsed.get("Hires resize-2", 0))
        if all(final):
            parsed["Size-1"], parsed["Size-2"] = final
            return
    if parsed.get("First pass size-1") is None or parsed.get("First pass size-2") is None:
        return
    first = int(parsed["First pass size-1"]), int(parsed["First pass size-2"])
    width, height = int(parsed.get("Size-1", 512)), int(parsed.get("Size-2", 512))
    if not all(first):
        first = old_first_pass_size(width, height)
    parsed["Size-1"], parsed["Size-2"] = first
    parsed["Hires resize-1"], parsed["Hires resize-2"] = width, height


def parse_with_defaults(text: str, backcompat: bool = True, old_hires_size: bool = False,
                        skip: Sequence[str] = ()) -> dict[str, Any]:
    """`parse`, plus the keys an infotext implies by leaving them out (A1111's `parameters` of png-info), an old
    hires fix's sizes in today's keys (`restore_first_pass_size`), and, with `backcompat` (the setting
    auto_backcompat), the settings an older A1111 version implies; then without the keys in `skip` (the setting
    infotext_skip_pasting: "Seed", "Size-1", "Clip skip", ...), as A1111 leaves them out last."""
    result = parse(text)
    for key, value in IMPLIED_DEFAULTS.items():
        result.setdefault(key, value)
    if result["FP8 weight"] != "Disable":  # A1111: FP8 weights without the key had no float16 copies
        result.setdefault("Cache FP16 weight for LoRA", False)
    restore_first_pass_size(result, old_hires_size)
    version = a1111_version(result.get("Version"))
    if backcompat and version is not None:
        result.update(version_settings(version, result))
    hypernet = result.get("Hypernet")  # A1111's old keys for its one hypernetwork: back into the prompt's tag
    if hypernet is not None:
        result["Prompt"] = f'{result.get("Prompt", "")}<hypernet:{hypernet}:{result.get("Hypernet strength", "1.0")}>'
    for key in skip:
        result.pop(key, None)
    return result


def pasted_keys() -> list[str]:
    """The infotext keys a paste reads, for the setting infotext_skip_pasting to pick from."""
    keys = [key for _, key, _ in (*REQUEST_FIELDS, *SETTING_FIELDS)]
    return sorted(dict.fromkeys(["Model hash", "Model", "Styles array", *keys]), key=str.casefold)


def version_settings(version: tuple[int, int, int, int], parsed: dict[str, Any]) -> dict[str, Any]:
    """A1111's back-compat (infotext_versions.backcompat): the compatibility settings a picture made by an
    older A1111 version was made with, as infotext keys."""
    out: dict[str, Any] = {}
    if version < (1, 6, 0, 0) and "[" in str(parsed.get("Prompt", "")):
        out["Old prompt editing timelines"] = True  # prompt editing counted in the old timelines
    if version < (1, 6, 0, 0) and parsed.get("Sampler") in ("DDIM", "PLMS"):
        out["Pad conds v0"] = True  # these samplers padded the shorter prompt with its last vector
    if version < (1, 7, 0, 225):
        out["Downcast alphas_cumprod"] = True  # the noise schedule was held in 16 bits
    if version < (1, 8, 0, 0) and parsed.get("Refiner"):
        out["Refiner switch by sampling steps"] = True
    return out


# Infotext keys that fill fields of a txt2img request (A1111's "paste fields"): (field, key, type).
REQUEST_FIELDS: list[tuple[str, str, type]] = [
    ("prompt", "Prompt", str), ("negative_prompt", "Negative prompt", str), ("steps", "Steps", int),
    ("sampler_name", "Sampler", str), ("scheduler", "Schedule type", str), ("cfg_scale", "CFG scale", float),
    ("seed", "Seed", int), ("width", "Size-1", int), ("height", "Size-2", int), ("batch_size", "Batch size", int),
    ("subseed", "Variation seed", int), ("subseed_strength", "Variation seed strength", float),
    ("seed_resize_from_w", "Seed resize from-1", int), ("seed_resize_from_h", "Seed resize from-2", int),
    ("denoising_strength", "Denoising strength", float), ("hr_scale", "Hires upscale", float),
    ("hr_upscaler", "Hires upscaler", str), ("hr_second_pass_steps", "Hires steps", int),
    ("hr_resize_x", "Hires resize-1", int), ("hr_resize_y", "Hires resize-2", int),
    ("hr_prompt", "Hires prompt", str), ("hr_negative_prompt", "Hires negative prompt", str),
    ("hr_sampler_name", "Hires sampler", str), ("hr_scheduler", "Hires schedule type", str),
    ("s_churn", "Sigma churn", float), ("s_tmin", "Sigma tmin", float), ("s_tmax", "Sigma tmax", float),
    ("s_noise", "Sigma noise", float), ("refiner_switch_at", "Refiner switch at", float),
    ("tiling", "Tiling", bool),  # A1111 reads it as its setting `tiling`; here the request's own field
]

# Infotext keys that stand for settings (applied as override_settings): (setting, key, type).
SETTING_FIELDS: list[tuple[str, str, type]] = [
    ("CLIP_stop_at_last_layers", "Clip skip", int), ("randn_source", "RNG", str), ("sd_vae", "VAE", str),
    ("emphasis", "Emphasis", str), ("sd_vae_encode_method", "VAE Encoder", str),
    ("sd_vae_decode_method", "VAE Decoder", str),
    ("eta_noise_seed_delta", "ENSD", int), ("eta_ancestral", "Eta", float), ("eta_ddim", "Eta DDIM", float),
    ("sigma_min", "Schedule min sigma", float), ("sigma_max", "Schedule max sigma", float),
    ("rho", "Schedule rho", float), ("beta_dist_alpha", "Beta schedule alpha", float),
    ("beta_dist_beta", "Beta schedule beta", float), ("uni_pc_variant", "UniPC variant", str),
    ("uni_pc_skip_type", "UniPC skip type", str), ("uni_pc_order", "UniPC order", int),
    ("uni_pc_lower_order_final", "UniPC lower order final", bool),
    ("hires_fix_refiner_pass", "Hires refiner", str),
    ("refiner_switch_by_sample_steps", "Refiner switch by sampling steps", bool),
    ("use_old_scheduling", "Old prompt editing timelines", bool),
    ("skip_early_cond", "Skip Early CFG", float), ("s_min_uncond", "NGMS", float),
    ("s_min_uncond_all", "NGMS all steps", bool), ("img2img_extra_noise", "Extra noise", float),
    ("pad_cond_uncond", "Pad conds", bool), ("pad_cond_uncond_v0", "Pad conds v0", bool),
    ("use_downcasted_alpha_bar", "Downcast alphas_cumprod", bool), ("sd_noise_schedule", "Noise Schedule", str),
    ("sgm_noise_multiplier", "SGM noise multiplier", bool), ("fp8_storage", "FP8 weight", str),
    ("cache_fp16_weight", "Cache FP16 weight for LoRA", bool),
    ("token_merging_ratio", "Token merging ratio", float), ("token_merging_ratio_hr", "Token merging ratio hr", float),
]


def convert(key: str, value: Any, kind: type) -> Any:
    """An infotext value as `kind` (str, bool, int, float); ValueError naming `key` when it is not one."""
    if kind is str:
        return str(value)
    if kind is bool:
        text = str(value).strip().lower()
        if text not in ("true", "false"):
            raise ValueError(f"infotext: {key} {value!r} is not True or False")
        return text == "true"
    try:
        if kind is int:
            text = str(value).strip()
            return int(text) if text.lstrip("-").isdigit() else int(float(text))
        return kind(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int("inf")
        raise ValueError(f"infotext: {key} {value!r} is not a {kind.__name__}") from None


def request_values(params: dict[str, Any], mapping: list[tuple[str, str, type]]) -> dict[str, Any]:
    """{field or setting: typed value} for each mapped key present in parsed infotext `params`.
    A `Denoising strength` next to hires keys turns on the hires pass (`enable_hr`), as in A1111."""
    out = {name: convert(key, params[key], kind) for name, key, kind in mapping if params.get(key) is not None}
    if mapping is REQUEST_FIELDS and "Denoising strength" in params and (
            "Hires upscale" in params or "Hires upscaler" in params or "Hires resize-1" in params):
        out["enable_hr"] = True
    return out
