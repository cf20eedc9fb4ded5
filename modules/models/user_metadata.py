"""What a user writes about a network file, kept beside it as A1111 keeps it: `NAME.json` next to
`NAME.safetensors` with the keys "description", "notes" and for LoRA "sd version", "activation text",
"preferred weight" and "negative text". A1111's files are read as they are and keys we do not edit are
written back untouched, so the same folder works in both programs. A description may also come from
`NAME.txt` / `NAME.description.txt`, as A1111's cards read it."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from modules import fileio

log = logging.getLogger(__name__)

MAX_BYTES = 1 << 20  # a user-metadata file is a few lines; anything larger is not one
SD_VERSIONS = ("SD1", "SD2", "SDXL", "SD3", "Unknown")  # A1111's choices for "Stable Diffusion version"
MAX_PREFERRED_WEIGHT = 2.0  # A1111's slider range (0 means "use the default multiplier")
MAX_WEIGHT = 100.0  # what a file may hold (A1111 takes any number there; only its slider stops at 2)


def path_for(model_file: str | Path) -> Path:
    """`NAME.json` beside `NAME.ext` (only the last extension is replaced, as A1111's splitext does)."""
    return Path(model_file).with_suffix(".json")


class BrokenFile(ValueError):
    """A NAME.json that is there but is not a JSON object (saving over it would lose what it holds)."""


def _load(path: Path) -> dict[str, Any]:
    """The file's object; {} when there is none; BrokenFile saying why otherwise."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise BrokenFile(f"{path.name}: {path.stat().st_size} bytes is too large for a user-metadata file")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BrokenFile(f"{path.name} is not readable as JSON ({e})") from None
    if not isinstance(data, dict):
        raise BrokenFile(f"{path.name} holds a {type(data).__name__}, not a JSON object")
    return data


def read(model_file: str | Path) -> dict[str, Any]:
    """The user metadata of a network file: {} when there is none, or when the file is broken (said in the log;
    the card still shows)."""
    try:
        return _load(path_for(model_file))
    except BrokenFile as e:
        log.warning("Ignoring %s: %s", path_for(model_file), e)
        return {}


def preferred_vae(checkpoint_file: str | Path) -> str:
    """A checkpoint's preferred VAE, A1111's user metadata "vae": a VAE's name, "None" (the checkpoint's own), or
    "Automatic" when it names none (or the file is missing or broken)."""
    return UserMetadata.of(read(checkpoint_file)).vae or "Automatic"


def description_file(model_file: str | Path) -> str:
    """The text of `NAME.txt` or `NAME.description.txt` beside the file (A1111's `find_description`), or ""."""
    base = Path(model_file).with_suffix("")
    for candidate in (Path(f"{base}.txt"), Path(f"{base}.description.txt")):
        try:
            if candidate.is_file() and candidate.stat().st_size <= MAX_BYTES:
                return candidate.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
    return ""


@dataclass(frozen=True)
class UserMetadata:
    """The edited fields, checked. `preferred_weight` 0 means none (the default multiplier is used)."""
    description: str = ""
    notes: str = ""
    sd_version: str = "Unknown"
    activation_text: str = ""
    preferred_weight: float = 0.0
    negative_text: str = ""
    vae: str = ""  # a checkpoint's preferred VAE: a VAE's name, "None" (its own) or "Automatic"; "": none chosen

    @classmethod
    def of(cls, data: dict[str, Any], description: str = "") -> UserMetadata:
        """From a file's dict, leniently (a value of the wrong type is read as absent); `description` is the
        fallback text file's."""
        def text(key: str, default: str = "") -> str:
            value = data.get(key, default)
            return value if isinstance(value, str) else default

        weight = data.get("preferred weight", 0.0)
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            weight = 0.0
        if not 0.0 <= weight <= MAX_WEIGHT:  # NaN, negatives and absurd values are no weight
            weight = 0.0
        version = text("sd version", "Unknown")
        return cls(description=text("description") or description, notes=text("notes"),
                   sd_version=version if version in SD_VERSIONS else "Unknown",
                   activation_text=text("activation text"), preferred_weight=weight,
                   negative_text=text("negative text"), vae=text("vae").strip())

    def checked(self) -> UserMetadata:
        """Self, or ValueError naming the field that A1111's editor could not have produced."""
        if self.sd_version not in SD_VERSIONS:
            raise ValueError(f"Stable Diffusion version must be one of {', '.join(SD_VERSIONS)}, "
                             f"not {self.sd_version!r}")
        weight = self.preferred_weight
        if not isinstance(weight, (int, float)) or not 0.0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"Preferred weight must be between 0 and {MAX_WEIGHT:g}, not {weight!r}")
        if len(self.vae) > 255 or any(c in self.vae for c in "\r\n\0"):
            raise ValueError("Preferred VAE must be a VAE's file name")
        return self


def write(model_file: str | Path, meta: UserMetadata, lora: bool, checkpoint: bool = False) -> Path:
    """Save `meta` into the file's `NAME.json` atomically, keeping every other key already there; the LoRA
    keys are written only for a LoRA, the preferred VAE ("vae") only for a checkpoint (A1111's editors for the
    other kinds have description and notes). Returns the JSON file's path."""
    meta.checked()
    path = path_for(model_file)
    data = _load(path)  # BrokenFile: left for the user to fix rather than replaced
    data["description"] = meta.description
    data["notes"] = meta.notes
    if lora:
        data["sd version"] = meta.sd_version
        data["activation text"] = meta.activation_text
        data["preferred weight"] = float(meta.preferred_weight)
        data["negative text"] = meta.negative_text
    if checkpoint:
        data["vae"] = meta.vae
    fileio.atomic_write_json(path, data)
    return path


_WORD = re.compile(r"[-_\w']+")


def dataset_tags(lora_metadata: dict[str, Any], limit: int = 24) -> list[tuple[str, int]]:
    """The training captions' tags kohya counted (`ss_tag_frequency`), most frequent first, as A1111's LoRA
    editor lists them: counts summed over the dataset folders; when the tags are long on average (16
    characters or more: sentences, not comma-separated tags) the words of 3 letters or more are counted
    instead."""
    raw = lora_metadata.get("ss_tag_frequency")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return []
    counts: dict[str, int] = {}
    if isinstance(raw, dict):
        for folder in raw.values():
            if not isinstance(folder, dict):
                continue
            for tag, count in folder.items():
                try:
                    counts[str(tag).strip()] = counts.get(str(tag).strip(), 0) + int(count)
                except (TypeError, ValueError):
                    continue
    if counts and sum(len(t) for t in counts) / len(counts) >= 16:
        words: dict[str, int] = {}
        for text, count in counts.items():
            for word in _WORD.findall(text):
                if len(word) >= 3:
                    words[word] = words.get(word, 0) + count
        counts = words
    ranked = sorted(counts, key=lambda t: counts[t], reverse=True)  # stable: equal counts keep their order
    return [(tag, counts[tag]) for tag in ranked[:limit]]


def toggle_tag(activation_text: str, tag: str) -> str:
    """The activation text with a dataset tag added after a comma, or taken out when it is already one of its
    comma-separated parts (clicking a tag in A1111's LoRA editor)."""
    parts = re.split(r" *, *", activation_text)
    if tag in parts:
        return ", ".join(p for p in parts if p != tag and p.strip())
    return f"{activation_text}, {tag}" if activation_text else tag


def _json_value(metadata: dict[str, Any], key: str) -> Any:
    value = metadata.get(key)
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return None
    return value


def lora_facts(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """What A1111's LoRA editor tells about a file from the training metadata kohya wrote into it: output
    name, base model, clip skip, network module, when training started, the bucket resolutions (most used
    first) and the number of training images."""
    facts = []
    for key, label in (("ss_output_name", "Output name"), ("ss_sd_model_name", "Model"),
                       ("ss_clip_skip", "Clip skip"), ("ss_network_module", "Kohya module")):
        value = metadata.get(key)
        if value is not None and str(value) != "None":
            facts.append((label, str(value)))
    try:
        started = float(metadata.get("ss_training_started_at") or 0)
        if started:
            facts.append(("Date trained", datetime.fromtimestamp(started, timezone.utc).strftime("%Y-%m-%d %H:%M")))
    except (TypeError, ValueError, OverflowError, OSError):
        pass
    buckets = _json_value(metadata, "ss_bucket_info")
    if isinstance(buckets, dict) and isinstance(buckets.get("buckets"), dict):
        counts: dict[str, int] = {}
        for bucket in buckets["buckets"].values():
            try:
                first, second = bucket["resolution"][:2]
                size = f"{second}x{first}"  # A1111 writes kohya's pair in this order
                counts[size] = counts.get(size, 0) + int(bucket.get("count", 0))
            except (KeyError, TypeError, ValueError):
                continue
        ranked = sorted(counts, key=lambda k: counts[k], reverse=True)
        if ranked:
            text = ", ".join(ranked[:4]) + (", ..." if len(ranked) > 4 else "")
            facts.append(("Resolutions" if len(ranked) > 1 else "Resolution", text))
    dirs = _json_value(metadata, "ss_dataset_dirs")
    if isinstance(dirs, dict):
        total = 0
        for params in dirs.values():
            try:
                total += int(params.get("img_count", 0)) if isinstance(params, dict) else 0
            except (TypeError, ValueError):
                continue
        if total:
            facts.append(("Dataset size", str(total)))
    return facts
