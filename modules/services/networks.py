"""The extra networks a prompt can name: LoRA, textual-inversion embeddings and hypernetworks, listed and
re-read."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from modules import fileio, images
from modules.generation import extra_networks
from modules.models.embeddings import Embedding, EmbeddingRegistry
from modules.models.hypernetwork import HypernetworkInfo, HypernetworkRegistry
from modules.models import user_metadata
from modules.models.registry import CheckpointRegistry
from modules.models.lora import LoraInfo, LoraRegistry
from modules.models.user_metadata import UserMetadata


class NetworksService:
    def __init__(self, loras: LoraRegistry, embeddings: EmbeddingRegistry,
                 hypernetworks: HypernetworkRegistry | None = None, checkpoints: CheckpointRegistry | None = None):
        self._loras = loras
        self._embeddings = embeddings
        self._hypernetworks = hypernetworks if hypernetworks is not None else HypernetworkRegistry((), loras.hashes)
        self._checkpoints = checkpoints  # for the Checkpoints tab's Edit card

    def loras(self) -> list[LoraInfo]:
        return self._loras.list()

    def find_lora(self, name: str) -> LoraInfo | None:
        """The LoRA a prompt's `<lora:NAME:...>` means (file name or alias)."""
        return self._loras.find(name)

    def lora_short_hash(self, name: str) -> str | None:
        """A1111's 12-hex addnet hash of the LoRA `name` (read once, then cached)."""
        info = self._loras.find(name)
        return info.shorthash(self._loras.hashes) if info is not None else None

    def refresh_loras(self) -> None:
        self._loras.refresh()

    def embeddings(self, reread: bool = False) -> dict[str, Embedding]:
        """The embeddings by name; the folder is read again when it changed (always with `reread`)."""
        return self._embeddings.refresh(force=reread)

    @property
    def embedding_errors(self) -> dict[str, str]:
        """Embedding files that could not be read, with why."""
        return self._embeddings.errors

    def hypernetworks(self) -> list[HypernetworkInfo]:
        return self._hypernetworks.list()

    def find_hypernetwork(self, name: str) -> HypernetworkInfo | None:
        return self._hypernetworks.find(name)

    def refresh_hypernetworks(self) -> None:
        self._hypernetworks.refresh()

    def cards(self) -> list[extra_networks.Card]:
        """The cards of the Extra networks panel, as the folders were last read."""
        return extra_networks.cards(self._loras, self._embeddings, self._hypernetworks)

    def refresh(self) -> list[extra_networks.Card]:
        """Read the folders again; the cards of the Extra networks panel."""
        self._loras.refresh()
        self._embeddings.refresh()
        self._hypernetworks.refresh()
        return self.cards()

    def _entries(self, tab: str) -> list:
        if tab == "Lora":
            return self._loras.list()
        if tab == "Textual Inversion":
            return list(self._embeddings.all().values())
        if tab == "Hypernetworks":
            return self._hypernetworks.list()
        if tab == "Checkpoints" and self._checkpoints is not None:  # not the built-in demo's (the install's files)
            return [info for info in self._checkpoints.list() if not info.builtin]
        return []

    def _entry(self, tab: str, path: str):
        """The listed network of that tab whose file is `path`, or None. `path` is only compared with the listed
        files: it is never opened itself."""
        return next((i for i in self._entries(tab) if str(i.filename) == path), None)

    def find_card(self, tab: str, path: str) -> extra_networks.Card | None:
        """The listed card of that tab whose file is `path` (files of the same name in two folders are two cards),
        its user metadata read now."""
        info = self._entry(tab, path)
        if info is None:
            return None
        if tab == "Checkpoints":
            return extra_networks.checkpoint_card(info)
        alias = self._loras.prompt_aliases().get(info.filename, "") if tab == "Lora" else ""
        return extra_networks.card_of(tab, info, alias)

    def _listed(self, tab: str, path: str) -> extra_networks.Card:
        card = self.find_card(tab, path)
        if card is None:
            raise ValueError(f"There is no {tab} card for {Path(path).name!r} (was its file removed? Press Refresh)")
        return card

    def save_user_metadata(self, tab: str, path: str, meta: UserMetadata) -> extra_networks.Card:
        """Write a card's user metadata into `NAME.json` beside its file. The file is the listed network's (see
        find_card): a client never names a path to write. ValueError for an unlisted card, a bad value, or a
        NAME.json that is there but broken (it is the user's to fix, not ours to replace)."""
        card = self._listed(tab, path)
        user_metadata.write(card.path, meta, lora=card.tab == "Lora", checkpoint=card.tab == "Checkpoints")
        return self._listed(tab, path)

    def replace_preview(self, tab: str, path: str, image: Image.Image, infotext: str | None
                        ) -> extra_networks.Card:
        """Save `image` (with its infotext) as the card's picture, `NAME.png` beside the network file, which
        is the first picture a card looks for (A1111's "Replace preview")."""
        card = self._listed(tab, path)
        fileio.atomic_write_bytes(Path(card.path).with_suffix(".png"), images.png_bytes(image, infotext))
        return self._listed(tab, path)

    def lora_metadata(self, path: str) -> dict:
        """The training metadata in a listed LoRA file's header (kohya's `ss_*` keys), {} for none."""
        info = self._entry("Lora", path)
        return dict(info.metadata) if info is not None else {}

    def rename_by_hash(self, prompt: str, lora_hashes: str | None) -> str:
        """A pasted infotext's `<lora:NAME:` tags renamed to the files here with the hashes it gives."""
        return self._loras.rename_by_hash(prompt, lora_hashes)

    def rename_hypernets_by_hash(self, prompt: str, hypernet_hashes: str | None) -> str:
        """A pasted infotext's `<hypernet:NAME:` tags renamed to the files here with the hashes its `Hypernetwork
        hashes` gives (`NAME: HASH, ...`), as LoRA names follow `Lora hashes`. Only hashes already known are
        used: no file is read."""
        wanted = {}
        for item in (hypernet_hashes or "").split(","):
            name, _, short = item.partition(":")
            if short.strip():
                wanted[name.strip()] = short.strip()

        def rename(m: re.Match) -> str:
            short = wanted.get(m[1].strip())
            found = self._hypernetworks.find_by_hash(short) if short else None
            return f"<hypernet:{found.name}" if found is not None and self._hypernetworks.find(m[1]) is not found \
                else m[0]

        return re.sub(r"<hypernet:([^:>]+)", rename, prompt) if wanted else prompt
