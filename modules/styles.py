"""Saved prompt styles: A1111's `styles.csv` (columns name, prompt, negative_prompt).

A style's text is merged into a prompt: where it contains `{prompt}` the prompt is put in its place,
otherwise it is appended after a comma. Styles apply in the order they are listed, the prompt with the
style prompts and the negative prompt with the style negative prompts. The file is read again when it
changes on disk. The style editor writes a style back into the file it came from (a new one into the first
file), keeping the file's other rows and columns, as A1111's editor does.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from modules import fileio

log = logging.getLogger(__name__)

COLUMNS = ("name", "prompt", "negative_prompt")  # A1111's styles.csv header


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str
    negative_prompt: str


def merge(style_text: str, prompt: str) -> str:
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


class TooLong(ValueError):
    """A prompt with its styles merged in would be longer than allowed; the message says which and how long."""


def merged_length(style_text: str, prompt: str) -> int:
    """len(merge(style_text, prompt)), worked out without making the text (a style with `{prompt}` twice doubles
    the prompt each time it is listed)."""
    if "{prompt}" in style_text:
        return len(style_text) + style_text.count("{prompt}") * (len(prompt) - len("{prompt}"))
    parts = [n for n in (len(prompt.strip()), len(style_text.strip())) if n]
    return sum(parts) + (2 if len(parts) == 2 else 0)


def apply(styles: list[PromptStyle], prompt: str, negative_prompt: str,
          max_chars: int | None = None) -> tuple[str, str]:
    """The prompts with `styles` merged in, in order. With `max_chars`: TooLong, before the text is made, when a
    merge would make either longer than that."""
    for style in styles:
        if max_chars is not None:
            for name, text, style_text in (("prompt", prompt, style.prompt),
                                           ("negative_prompt", negative_prompt, style.negative_prompt)):
                length = merged_length(style_text, text)
                if length > max_chars:
                    raise TooLong(f"{name}: {length} characters with style {style.name!r} merged in; "
                                  f"at most {max_chars}")
        prompt = merge(style.prompt, prompt)
        negative_prompt = merge(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt


def _without(style_text: str, prompt: str) -> str | None:
    """The prompt without a style's text, as A1111's paste takes it out (extract_style_text_from_prompt): for a
    style with `{prompt}`, what lies between its two sides; else the text before the style's at the end (and
    before the ", " that joined them). Both are compared stripped. None when the prompt does not hold it."""
    text, style = prompt.strip(), style_text.strip()
    if "{prompt}" in style:
        left, _, right = style.partition("{prompt}")
        return text[len(left):len(text) - len(right)] if text.startswith(left) and text.endswith(right) else None
    if not text.endswith(style):
        return None
    text = text[:len(text) - len(style)]
    return text[:-2] if text.endswith(", ") else text


def extract(styles: list[PromptStyle], prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
    """A1111's extract_styles_from_prompt, for a pasted infotext: the styles whose texts the prompts end with (or
    are wrapped in), taken out again one at a time, the last applied first; returns their names in the order they
    were applied and the prompts without them. A style with neither text is never found."""
    left, found = list(styles), []
    while True:
        for style in left:
            if not style.prompt and not style.negative_prompt:
                continue
            bare = _without(style.prompt, prompt)
            bare_negative = _without(style.negative_prompt, negative_prompt) if bare is not None else None
            if bare_negative is not None:
                prompt, negative_prompt = bare, bare_negative
                found.append(style.name)
                left.remove(style)
                break
        else:
            return found[::-1], prompt, negative_prompt


def read_csv(path: Path) -> dict[str, PromptStyle]:
    """Styles by name. Rows without a name are skipped; A1111's old column name `text` is read as
    `prompt`."""
    styles: dict[str, PromptStyle] = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            name = (row.get("name") or "").strip()
            if not name:
                continue
            prompt = row.get("prompt", row.get("text")) or ""
            styles[name] = PromptStyle(name, prompt, row.get("negative_prompt") or "")
    return styles


class StyleStore:
    """The styles of one or more CSV files (the first file wins for a name used twice)."""

    def __init__(self, files: tuple[Path, ...]):
        self.files = tuple(Path(f) for f in files)
        self._lock = threading.Lock()
        self._stamp: tuple = ()
        self._styles: dict[str, PromptStyle] = {}

    def all(self) -> dict[str, PromptStyle]:
        stamp = tuple((str(f), os.stat(f).st_mtime if f.is_file() else None) for f in self.files)
        with self._lock:
            if stamp != self._stamp:
                styles: dict[str, PromptStyle] = {}
                for f in self.files:
                    if not f.is_file():
                        continue
                    try:
                        for name, style in read_csv(f).items():
                            styles.setdefault(name, style)
                    except (OSError, csv.Error, UnicodeDecodeError) as e:
                        log.warning("Could not read styles from %s: %s", f, e)
                self._styles, self._stamp = styles, stamp
            return dict(self._styles)

    def resolve(self, names: list[str]) -> tuple[list[PromptStyle], list[str]]:
        """(the styles found, in the given order; the names not found)."""
        known = self.all()
        return [known[n] for n in names if n in known], [n for n in names if n not in known]

    def _file_of(self, name: str) -> Path | None:
        """The first file that has a style of that name (the one whose style is in use)."""
        for f in self.files:
            try:
                if f.is_file() and name in read_csv(f):
                    return f
            except (OSError, csv.Error, UnicodeDecodeError):
                continue
        return None

    def save(self, style: PromptStyle) -> Path:
        """Add or change a style: written into the file it came from, a new one into the first file (created when
        missing). ValueError for a name A1111 would not keep. Returns the file written."""
        name = style.name.strip()
        if not name or name.lower().strip("# ") in ("", "none"):
            raise ValueError(f"A style needs a name (not {style.name!r}, which A1111 does not keep)")
        with self._lock:
            target = self._file_of(name) or self.files[0]
            header, rows = _rows(target)
            row = {"name": name, "prompt": style.prompt, "negative_prompt": style.negative_prompt}
            same = [i for i, r in enumerate(rows) if (r.get("name") or "").strip() == name]
            if not same:
                rows.append(row)
            for i in same:  # a name written twice in one file: every row (the last is the one read)
                rows[i] = {**rows[i], **row}
            _write(target, header, rows)
            self._stamp = ()  # read again: a write within the file system's mtime granularity changes no stamp
        return target

    def delete(self, name: str) -> Path | None:
        """Remove the style in use of that name from its file (every row of that name there). The file, or None
        when no file has it."""
        with self._lock:
            target = self._file_of(name)
            if target is None:
                return None
            header, rows = _rows(target)
            _write(target, header, [r for r in rows if (r.get("name") or "").strip() != name])
            self._stamp = ()
        return target


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A styles file's columns (A1111's three first, any others after; the old `text` read as `prompt`) and its
    rows as written (nameless ones too); ([A1111's], []) for a missing file."""
    if not path.is_file():
        return list(COLUMNS), []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        rows = []
        for row in reader:
            if "prompt" not in row and "text" in row:
                row["prompt"] = row.pop("text")
            rows.append({k: v for k, v in row.items() if k is not None})
        extra = [c for c in (reader.fieldnames or []) if c not in COLUMNS and c != "text" and c]
    return list(COLUMNS) + extra, rows


def _write(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    """The file written at once (a reader never sees half of it), with a BOM as A1111 writes it."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) or "" for k in header})
    fileio.atomic_write_bytes(path, buf.getvalue().encode("utf-8-sig"))
