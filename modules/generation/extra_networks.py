"""Extra-network tags in prompts: `<lora:NAME:0.8>`, `<hypernet:NAME:1>`, `<lora:NAME:te=0.5:unet=1>`.

A tag is `<kind:args>` with `kind` a word and `args` anything up to the next `>`, as in AUTOMATIC1111.
Tags are taken out of the prompt before it is encoded (they never reach the text encoder) and handed
to whatever implements that kind of network. The prompt written to the infotext keeps them, so a
pasted infotext brings them back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from modules.models import previews, user_metadata
from modules.models.user_metadata import UserMetadata

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


def js_number(value: float) -> str:
    """A number as A1111's page writes it into a card's tag (JavaScript's shortest form: 1, 0.5)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


@dataclass(frozen=True)
class Card:
    """One entry of the UI's Lora / Textual Inversion / Hypernetworks card lists, with what its user metadata
    (`NAME.json`, see models.user_metadata) says about it."""
    tab: str  # "Lora", "Textual Inversion", "Hypernetworks" or "Checkpoints", as A1111 names its tabs
    name: str
    path: str
    preview: str | None  # NAME.png / NAME.preview.png beside the file
    meta: UserMetadata = UserMetadata()
    detected_version: str = "Unknown"  # a LoRA's model version as its own metadata says (LoraInfo.sd_version)
    editable: bool = True  # Edit card may write beside its file (not the built-in demo checkpoint's, in the install)
    alias: str = ""  # a LoRA's name for its tag by lora_preferred_name "Alias from file" (LoraRegistry.prompt_aliases)

    @property
    def sd_version(self) -> str:
        """The model version it is for: what the user set in its metadata, else what the file says."""
        return self.meta.sd_version if self.meta.sd_version != "Unknown" else self.detected_version

    def shown_for(self, model_version: str, show_all: bool = False, hide_unknown_for: tuple[str, ...] = ()) -> bool:
        """Whether A1111's Lora page lists it while a model of `model_version` ("SD1", "SD2", "SDXL") is loaded:
        only networks for that version (settings lora_show_all, lora_hide_unknown_for_versions)."""
        if self.tab != "Lora" or show_all:
            return True
        if self.sd_version == "Unknown":
            return model_version not in hide_unknown_for
        return self.sd_version == model_version

    def tag(self, default_multiplier: float = 1.0, by_alias: bool = True) -> str:
        """The network's own text: `<lora:NAME:W>` with W the preferred weight when one is set, else the default
        multiplier, `<hypernet:NAME:M>`, or an embedding's name. Numbers as A1111's page writes them (its tag is a
        JavaScript expression: `1`, `0.8`). A LoRA's NAME is its alias when `by_alias` (setting lora_preferred_name
        "Alias from file", A1111's default), else its file name."""
        if self.tab == "Lora":
            name = self.alias or self.name if by_alias else self.name
            return f"<lora:{name}:{js_number(self.meta.preferred_weight or default_multiplier)}>"
        if self.tab == "Hypernetworks":
            return f"<hypernet:{self.name}:{js_number(default_multiplier)}>"
        return self.name

    @property
    def activation(self) -> str:
        """What follows the tag in the prompt: a LoRA's "activation text"."""
        return self.meta.activation_text if self.tab == "Lora" else ""

    def insert(self, default_multiplier: float = 1.0, by_alias: bool = True) -> str:
        """What a click adds to the prompt: the tag, then a LoRA's activation text after a space (A1111)."""
        tag = self.tag(default_multiplier, by_alias)
        return f"{tag} {self.activation}" if self.activation else tag

    @property
    def negative(self) -> str:
        """What a click adds to the negative prompt: a LoRA's "negative text"."""
        return self.meta.negative_text if self.tab == "Lora" else ""

    def _pattern(self) -> re.Pattern:
        """This card's text in a prompt, whatever weight it was given (a LoRA's activation text, when right
        after it, goes with it)."""
        if self.tab in ("Lora", "Hypernetworks"):
            kind = "(?:lora|lyco)" if self.tab == "Lora" else "hypernet"
            names = "|".join(re.escape(n) for n in dict.fromkeys(filter(None, (self.name, self.alias))))
            tag = rf"<{kind}:(?:{names})(?::[^>]*)?>"  # by file name or alias, whichever the setting put there
            return re.compile(tag + (rf"(?:\s*{re.escape(self.activation)})?" if self.activation else ""))
        return re.compile(rf"(?<![\w-]){re.escape(self.name)}(?![\w-])")  # a word of its own, not part of one

    def toggled(self, prompt: str, negative: str, default_multiplier: float = 1.0,
                negative_focused: bool = False, by_alias: bool = True) -> tuple[str, str]:
        """The prompts after a click on the card, as A1111's cards work: when the prompt already has the
        card's tag (at any weight) it is taken out with its activation text and the negative text; otherwise
        they are added, a space after what is there. An embedding goes into the negative prompt instead when that
        box was the last one focused (`negative_focused`: how negative embeddings are added in A1111)."""
        if negative_focused and self.tab == "Textual Inversion":  # the same toggle, in the other box
            negative, prompt = self.toggled(negative, prompt, default_multiplier)
            return prompt, negative
        pattern = self._pattern()
        if pattern.search(prompt):
            prompt = _tidy(pattern.sub("", prompt))
            if self.negative and self.negative in negative:
                negative = _tidy(negative.replace(self.negative, "", 1))
            return prompt, negative
        prompt = _append(prompt, self.insert(default_multiplier, by_alias))
        if self.negative and self.negative not in negative:
            negative = _append(negative, self.negative)
        return prompt, negative


def _append(text: str, addition: str) -> str:
    return f"{text.rstrip()} {addition}" if text.strip() else addition


def _tidy(text: str) -> str:
    """Text with what was cut out leaving no double spaces or dangling space."""
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def card_of(tab: str, info, alias: str = "") -> Card:
    """The card of one registry entry (a LoraInfo, Embedding or HypernetworkInfo), its user metadata read now;
    `alias`: a LoRA's name for its tag by alias (LoraRegistry.prompt_aliases)."""
    preview = info.preview
    return Card(tab, info.name, str(info.filename), str(preview) if preview else None,
                UserMetadata.of(user_metadata.read(info.filename), user_metadata.description_file(info.filename)),
                getattr(info, "sd_version", "Unknown"), alias=alias)


def checkpoint_card(info) -> Card:
    """The card of a checkpoint (a CheckpointInfo): its name without the extension (the folder kept), its picture
    beside the file as a network's, its user metadata's description."""
    preview = previews.preview_beside(info.filename)
    return Card("Checkpoints", info.name.rsplit(".", 1)[0], str(info.filename), str(preview) if preview else None,
                UserMetadata.of(user_metadata.read(info.filename), user_metadata.description_file(info.filename)),
                editable=not info.builtin)


def cards(loras, embeddings, hypernetworks=None) -> list[Card]:
    """Cards for the installed LoRA, embeddings and hypernetworks, in list order, each with its user
    metadata as the files now say; the arguments are the model manager's registries."""
    aliases = loras.prompt_aliases()
    out = [card_of("Lora", info, aliases.get(info.filename, "")) for info in loras.list()]
    out += [card_of("Textual Inversion", emb) for emb in embeddings.all().values()]
    out += [card_of("Hypernetworks", info) for info in (hypernetworks.list() if hypernetworks else [])]
    return out
