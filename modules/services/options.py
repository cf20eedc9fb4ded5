"""The settings a request runs with, validated changes to them, and the server folders clients may name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from modules.folders import FolderPolicy, FolderRefused
from modules.services.checkpoints import CheckpointService
from modules.services.errors import BadRequest, UnknownOption, describe_validation_error
from modules.settings import Settings, SettingsStore


class OptionsService:
    def __init__(self, store: SettingsStore, checkpoints: CheckpointService, folders: FolderPolicy):
        self._store = store
        self._checkpoints = checkpoints
        self._folders = folders

    @property
    def values(self) -> Settings:
        """The settings as they are now."""
        return self._store.values

    @property
    def path(self):
        """The file the settings are kept in (config.json)."""
        return self._store.path

    def effective(self, overrides: dict[str, Any]) -> tuple[Settings, list[str]]:
        """The settings one request runs with (its override_settings over the saved ones) and warnings for
        keys that do not exist."""
        unknown = [k for k in overrides if k not in Settings.model_fields]
        try:
            merged = Settings(**{**self.values.model_dump(), **overrides})
        except ValidationError as e:
            raise BadRequest(f"override_settings: {describe_validation_error(e)}") from None
        if "sd_vae" in overrides:
            self._checkpoints.check_vae_name(merged.sd_vae)
        self._check_folders(overrides, "override_settings: ")
        return merged, [f"override_settings: unknown option {k!r} ignored" for k in unknown]

    def set(self, changes: dict[str, Any]) -> None:
        """Validate and save `changes`; a new sd_model_checkpoint is loaded first (through the queue), so a
        checkpoint that cannot be loaded changes nothing."""
        unknown = [k for k in changes if k not in Settings.model_fields]
        if unknown:
            raise UnknownOption(f"Unknown option(s): {', '.join(unknown)}")
        try:
            Settings(**{**self.values.model_dump(), **changes})
        except ValidationError as e:
            raise BadRequest(describe_validation_error(e)) from None
        if "sd_vae" in changes:
            self._checkpoints.check_vae_name(changes["sd_vae"])
        self._check_folders(changes)
        if "sd_model_checkpoint" in changes:
            info = self._checkpoints.select(changes["sd_model_checkpoint"], changes.get("sd_vae", self.values.sd_vae))
            changes = {**changes, "sd_model_checkpoint": info.title}
        elif "sd_vae" in changes:
            self._checkpoints.check_vae_for_current(changes["sd_vae"])  # fail early on a bad name
        self._store.update(changes)

    def update(self, changes: dict[str, Any]) -> None:
        """Save `changes` as they are (the caller has validated them)."""
        self._store.update(changes)

    def _check_folders(self, changes: dict[str, Any], prefix: str = "") -> None:
        try:
            self._folders.check_settings(changes, self.values.model_dump())
        except FolderRefused as e:
            raise BadRequest(prefix + str(e)) from None

    def page_folder(self, what: str, folder: str) -> Path:
        """A server folder typed into the page (img2img Batch, Extras batch) as a real path, if clients may use
        it (see modules/folders); BadRequest naming `what` otherwise."""
        try:
            return self._folders.page_folder(what, folder)
        except FolderRefused as e:
            raise BadRequest(str(e)) from None
