"""Generation parameters as text, in AUTOMATIC1111's "infotext" layout:

    <prompt>
    Negative prompt: <negative prompt>          (omitted when empty)
    Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, ...

A value containing ',', ':' or a newline is written JSON-quoted. `parse` reads both ours and A1111's.
"""

from __future__ import annotations

import json
import re
from typing import Any

PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
SIZE_RE = re.compile(r"^(\d+)x(\d+)$")


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
    """{"Prompt": ..., "Negative prompt": ..., key: value, ...}; `Size: 512x768` also gives Size-1 and Size-2."""
    lines = text.strip().split("\n")
    result: dict[str, Any] = {}
    last = lines[-1] if lines else ""
    matches = PARAM_RE.findall(last)
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
