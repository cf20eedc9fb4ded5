"""AUTOMATIC1111's file and folder name patterns: `[seed]-[prompt_spaces]`, `[date]`, `[datetime<%H%M>]`, ...

A tag is a word in square brackets, matched case-insensitively, optionally with `<arguments>`. Text from the
prompt and other free text is sanitised (characters that are not allowed in file names become `_`) and cut
to 128 characters. A tag we do not know, or one that cannot be filled in, is left as written. A few tags,
such as [batch_number] for a batch of one, drop themselves and the text in front of them, so that
`[seed]-[batch_number]` is just the seed.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import string
import zoneinfo
from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image

INVALID_CHARS = '#<>:"/\\|?*\n\r\t'
MAX_PART_LENGTH = 128  # A1111's --filenames-max-length default
DEFAULT_TIME_FORMAT = "%Y%m%d%H%M%S"
SKIP = object()  # a tag's value meaning "leave out this tag and the text before it"

_TAG = re.compile(r"\[([^\[\]]+)\]")
_TAG_ARGS = re.compile(r"^([^<>]*)((?:<[^>]*>)*)$")
_NON_LETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + "]+")
_SANITISE = str.maketrans({c: "_" for c in INVALID_CHARS})


def sanitize(text: str, replace_spaces: bool = True) -> str:
    """A1111's `sanitize_filename_part`: spaces to `_` (if asked), forbidden characters to `_`, no leading
    spaces, at most MAX_PART_LENGTH characters, no trailing spaces or dots."""
    if replace_spaces:
        text = text.replace(" ", "_")
    return text.translate(_SANITISE).lstrip(" ")[:MAX_PART_LENGTH].rstrip(" .")


def _hash(text: str | bytes, length: str = "") -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:int(length) if length else None]


@dataclass
class FileNamer:
    """What a job's file names can say. Built once per job; `expand` fills a pattern for one image."""
    prompt: str = ""
    negative_prompt: str = ""
    prompt_no_styles: str | None = None  # the prompt before styles were merged into it
    styles: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # every seed of the job
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str | None = None
    scheduler: str | None = None  # A1111's [scheduler]: "Karras", "Automatic", ...
    model_name: str | None = None
    model_hash: str | None = None
    vae_filename: str | None = None
    clip_skip: int | None = None
    denoising_strength: float | None = None
    batch_size: int = 1
    n_iter: int = 1
    job_timestamp: str | None = None
    max_prompt_words: int = 8
    now: Callable[[], datetime.datetime] = datetime.datetime.now

    def expand(self, pattern: str, image: Image.Image | None = None, seed: int | None = None, index: int = 0,
               basename: str = "") -> str:
        """`pattern` filled in for the image of the job at `index` (0-based, over all batches)."""
        out, start = [], 0
        for m in _TAG.finditer(pattern):
            text, start = pattern[start:m.start()], m.end()
            parts = _TAG_ARGS.match(m.group(1))
            value = None
            if parts:
                name, args = parts.group(1).lower(), re.findall(r"<([^>]*)>", parts.group(2))
                try:
                    value = self._value(name, args, image, seed, index, basename)
                except (ValueError, TypeError, LookupError):
                    value = None
            if value is SKIP:
                continue
            out.append(text + (m.group(0) if value is None else str(value)))
        out.append(pattern[start:])
        return "".join(out)

    def _value(self, name: str, args: list[str], image: Image.Image | None, seed: int | None, index: int,
               basename: str) -> Any:
        one_image = self.batch_size == 1
        prompt = self.prompt
        match name:
            case "seed":
                return "" if seed is None else seed
            case "seed_first":
                return seed if one_image else self.seeds[0]
            case "seed_last":
                return SKIP if one_image else self.seeds[-1]
            case "steps":
                return self.steps
            case "cfg":
                return self.cfg_scale
            case "width":
                return image.width if image else None
            case "height":
                return image.height if image else None
            case "styles":
                return sanitize(", ".join(s for s in self.styles if s != "None") or "None", replace_spaces=False)
            case "sampler":
                return sanitize(self.sampler, replace_spaces=False) if self.sampler else None
            case "scheduler":
                return sanitize(self.scheduler, replace_spaces=False) if self.scheduler else None
            case "sampler_scheduler":
                if self.sampler and self.scheduler:
                    return sanitize(f"{self.sampler} {self.scheduler}", replace_spaces=False)
                return None
            case "model_hash":
                return self.model_hash
            case "model_name":
                return sanitize(self.model_name, replace_spaces=False) if self.model_name else None
            case "vae_filename":  # A1111: the VAE file's name up to its first dot; "NoneType" without one
                if not self.vae_filename:
                    return "NoneType"
                parts = self.vae_filename.replace("\\", "/").rsplit("/", 1)[-1].split(".")
                return parts[1] if len(parts) > 1 and parts[0] == "" else parts[0]
            case "clip_skip":
                return self.clip_skip
            case "denoising":
                return self.denoising_strength if self.denoising_strength else SKIP
            case "date":
                return self.now().strftime("%Y-%m-%d")
            case "datetime":
                try:  # an unknown time zone: local time, as A1111
                    zone = zoneinfo.ZoneInfo(args[1]) if len(args) > 1 and args[1] else None
                except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                    zone = None
                moment = self.now().astimezone(zone)
                try:
                    text = moment.strftime(args[0] if args and args[0] else DEFAULT_TIME_FORMAT)
                except ValueError:
                    text = moment.strftime(DEFAULT_TIME_FORMAT)
                return sanitize(text, replace_spaces=False)
            case "job_timestamp":
                return self.job_timestamp
            case "prompt":
                return sanitize(prompt)
            case "prompt_spaces":
                return sanitize(prompt, replace_spaces=False)
            case "prompt_no_styles":
                return sanitize(prompt if self.prompt_no_styles is None else self.prompt_no_styles,
                                replace_spaces=False)
            case "prompt_words":
                words = [w for w in _NON_LETTERS.split(prompt) if w] or ["empty"]
                return sanitize(" ".join(words[:self.max_prompt_words]), replace_spaces=False)
            case "negative_prompt":  # not in A1111 1.10; written as [prompt] is
                return sanitize(self.negative_prompt)
            case "prompt_hash":
                return _hash(prompt, *args[:1] or ["8"])
            case "negative_prompt_hash":
                return _hash(self.negative_prompt, *args[:1] or ["8"])
            case "full_prompt_hash":
                return _hash(f"{prompt} {self.negative_prompt}", *args[:1] or ["8"])
            case "image_hash":
                return _hash(image.tobytes(), *args[:1]) if image else None
            case "hasprompt":  # [hasprompt<cat|nocat><dog>]: each word found in the prompt, or its default
                found = ""
                for arg in filter(None, args):
                    expected, _, default = arg.partition("|")
                    found += expected.lower() if expected.lower() in prompt.lower() else default
                return sanitize(found)
            case "batch_number":
                return SKIP if one_image else index % self.batch_size + 1
            case "batch_size":
                return self.batch_size
            case "generation_number":
                return SKIP if one_image and self.n_iter == 1 else index + 1
            case "basename":
                return basename or "img"
            case "none":
                return ""
        return None
