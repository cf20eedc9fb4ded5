"""The extra networks a prompt can name: LoRA and textual-inversion embeddings, listed and re-read."""

from __future__ import annotations

from modules.generation import extra_networks
from modules.models.embeddings import Embedding, EmbeddingRegistry
from modules.models.lora import LoraInfo, LoraRegistry


class NetworksService:
    def __init__(self, loras: LoraRegistry, embeddings: EmbeddingRegistry):
        self._loras = loras
        self._embeddings = embeddings

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

    def cards(self) -> list[extra_networks.Card]:
        """The cards of the Extra networks panel, as the folders were last read."""
        return extra_networks.cards(self._loras, self._embeddings)

    def refresh(self) -> list[extra_networks.Card]:
        """Read both folders again; the cards of the Extra networks panel."""
        self._loras.refresh()
        self._embeddings.refresh()
        return self.cards()

    def rename_by_hash(self, prompt: str, lora_hashes: str | None) -> str:
        """A pasted infotext's `<lora:NAME:` tags renamed to the files here with the hashes it gives."""
        return self._loras.rename_by_hash(prompt, lora_hashes)
