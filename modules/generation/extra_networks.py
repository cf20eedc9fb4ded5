"""Extra-network tags in prompts: `<lora:NAME:0.8>`, `<hypernet:NAME:1>`, `<lora:NAME:te=0.5:unet=1>`.

A tag is `<kind:args>` with `kind` a word and `args` anything up to the next `>`, as in AUTOMATIC1111.
Tags are taken out of the prompt before it is encoded (they never reach the text encoder) and handed
to whatever implements that kind of network. The prompt written to the infotext keeps them, so a
pasted infotext brings them back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TAG = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ExtraNetworkTag:
    kind: str  # "lora", "hypernet", ...
    args: tuple[str, ...]  # the `:`-separated arguments as written
    text: str  # the whole tag, for messages

    @property
    def positional(self) -> list[str]:
        return [a for a in self.args if "=" not in a]

    @property
    def named(self) -> dict[str, str]:
        return dict(a.split("=", 1) for a in self.args if "=" in a)


@dataclass
class ParsedPrompt:
    text: str  # the prompt with every tag removed
    tags: list[ExtraNetworkTag] = field(default_factory=list)

    def by_kind(self) -> dict[str, list[ExtraNetworkTag]]:
        out: dict[str, list[ExtraNetworkTag]] = {}
        for tag in self.tags:
            out.setdefault(tag.kind, []).append(tag)
        return out


def parse(prompt: str) -> ParsedPrompt:
    """The prompt without its tags, and the tags in the order written."""
    tags: list[ExtraNetworkTag] = []

    def take(m: re.Match) -> str:
        tags.append(ExtraNetworkTag(m.group(1), tuple(m.group(2).split(":")), m.group(0)))
        return ""

    return ParsedPrompt(TAG.sub(take, prompt), tags)


# Kinds that something in the engine applies (`lyco` is A1111's old name for LyCORIS networks, read as
# LoRA). A tag of any other kind is removed from the prompt and reported, never an error.
LORA_KINDS: frozenset[str] = frozenset({"lora", "lyco"})
HYPERNET_KINDS: frozenset[str] = frozenset({"hypernet"})
SUPPORTED_KINDS: frozenset[str] = LORA_KINDS | HYPERNET_KINDS


def with_hypernetwork(prompt: str, name: str, multiplier: float = 1.0) -> str:
    """The prompt with `<hypernet:NAME:MULT>` appended, as A1111 appends the `sd_hypernetwork` setting's network
    (without a space, multiplier written as a float); unchanged when the setting is None or the prompt already
    names that hypernetwork."""
    if not name or name == "None":
        return prompt
    if any(t.kind in HYPERNET_KINDS and t.positional[:1] == [name] for t in parse(prompt).tags):
        return prompt
    return f"{prompt}<hypernet:{name}:{float(multiplier)}>"


def unsupported_warnings(tags: list[ExtraNetworkTag]) -> list[str]:
    return [f"Extra network {tag.text} was ignored: {tag.kind!r} networks are not supported yet"
            for tag in tags if tag.kind not in SUPPORTED_KINDS]


@dataclass(frozen=True)
class Card:
    """One entry of the UI's Lora / Textual Inversion / Hypernetworks card lists."""
    tab: str  # "Lora", "Textual Inversion" or "Hypernetworks", as A1111 names its tabs
    name: str
    insert: str  # what a click adds to the prompt
    path: str
    preview: str | None  # NAME.png / NAME.preview.png beside the file


def cards(loras, embeddings, hypernetworks=None) -> list[Card]:
    """Cards for the installed LoRA (`<lora:NAME:1>`, A1111's default multiplier), embeddings (the
    name itself) and hypernetworks (`<hypernet:NAME:1>`), in list order; the arguments are the model manager's
    registries."""
    out = [Card("Lora", info.name, f"<lora:{info.name}:1>", str(info.filename),
                str(info.preview) if info.preview else None) for info in loras.list()]
    out += [Card("Textual Inversion", emb.name, emb.name, str(emb.filename),
                 str(emb.preview) if emb.preview else None) for emb in embeddings.all().values()]
    out += [Card("Hypernetworks", info.name, f"<hypernet:{info.name}:1>", str(info.filename),
                 str(info.preview) if info.preview else None) for info in (hypernetworks.list() if hypernetworks
                                                                           else [])]
    return out
