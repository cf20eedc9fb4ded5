"""An infotext read into request fields and settings: one reader for the API's `infotext` field and the page's
paste and "Send to" buttons, so both fill the same fields with the same values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from modules import infotext, styles
from modules.generation.params import SoftInpainting
from modules.services.checkpoints import CheckpointService
from modules.services.errors import BadRequest, describe_validation_error
from modules.services.networks import NetworksService
from modules.services.options import OptionsService
from modules.services.scripts import xyz
from modules.settings import Settings


@dataclass(frozen=True)
class Pasted:
    values: dict[str, Any]  # GenerationParams fields the infotext gives
    settings: dict[str, Any]  # settings it implies (Clip skip, RNG, VAE, ...)
    checkpoint: str | None  # the title of the checkpoint here that its `Model hash` / `Model` names
    warning: str | None  # set when the text was too long and only part of it was read
    unknown_refiner: str | None = None  # its `Refiner` when no checkpoint here is that one (values keep the name)
    script: tuple[str, list[Any]] | None = None  # (script title, script_args) of a script's grid (X/Y/Z plot)
    unknown_hires_checkpoint: str | None = None  # its `Hires checkpoint` when no checkpoint here is that one


class InfotextReader:
    """Reads infotexts for the API's `infotext` field and the page's paste (see `read`)."""

    def __init__(self, networks: NetworksService, checkpoints: CheckpointService, options: OptionsService,
                 style_store: styles.StyleStore | None = None):
        self._networks = networks
        self._checkpoints = checkpoints
        self._options = options
        self._styles = style_store

    def read(self, text: str, txt2img: bool, find_styles: bool = True) -> Pasted:
        """The fields and settings infotext `text` gives; BadRequest naming a value that is not a number where
        one is needed. A1111's rules: `<lora:NAME:` and `<hypernet:NAME:` tags renamed to the files here with the
        hashes the text gives (`Lora hashes`, `Hypernetwork hashes`);
        for txt2img, a denoising strength means the hires fix was on; with `find_styles`, styles found in the
        prompts as the setting infotext_styles says (`styles_in`)."""
        current = self._options.values
        parsed = infotext.parse_with_defaults(text or "", current.auto_backcompat,
                                              current.use_old_hires_fix_width_height, current.infotext_skip_pasting)
        parsed["Prompt"] = self._networks.rename_by_hash(parsed.get("Prompt", ""), parsed.get("Lora hashes"))
        parsed["Prompt"] = self._networks.rename_hypernets_by_hash(parsed["Prompt"], parsed.get("Hypernetwork hashes"))
        found = self.styles_in(parsed) if find_styles else None
        try:
            values = infotext.request_values(parsed, infotext.REQUEST_FIELDS)
            settings = infotext.request_values(parsed, infotext.SETTING_FIELDS)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if found is not None:
            values["styles"] = found
        if txt2img:
            values["enable_hr"] = "Denoising strength" in parsed
        else:
            try:
                soft = SoftInpainting.from_infotext(parsed)
            except ValueError as e:  # a bad number, or one out of the sliders' range
                raise BadRequest(describe_validation_error(e) if isinstance(e, ValidationError) else str(e)) \
                    from None
            if soft is not None:
                values["soft_inpainting"] = soft
        checkpoint = None
        for key in ("Model hash", "Model"):
            found = self._checkpoints.find(str(parsed[key])) if parsed.get(key) else None
            if found is not None:
                checkpoint = found.title
                break
        unknown_refiner = None
        if parsed.get("Refiner"):  # "NAME [hash10]": the checkpoint here by title, name or hash (lookup_checkpoint)
            name = str(parsed["Refiner"]).strip()
            refiner = self._checkpoints.find(name)
            values["refiner_checkpoint"] = refiner.title if refiner is not None else name
            unknown_refiner = name if refiner is None else None
        unknown_hires = None
        hires_name = str(parsed.get("Hires checkpoint") or "").strip()
        if txt2img and hires_name and hires_name != "Use same checkpoint":  # "NAME [hash10]", as the Refiner's
            found = self._checkpoints.find(hires_name)
            if found is not None:
                values["hr_checkpoint_name"] = found.title
            else:
                unknown_hires = hires_name
        elif txt2img:
            values["hr_checkpoint_name"] = "Use same checkpoint"  # A1111's implied default
        script_args = xyz.args_from_infotext(parsed, "txt2img" if txt2img else "img2img")
        script = (xyz.TITLE, script_args) if script_args is not None else None
        return Pasted(values, settings, checkpoint, infotext.cut((text or "").strip())[1], unknown_refiner, script,
                      unknown_hires)

    def styles_in(self, parsed: dict[str, Any]) -> list[str] | None:
        """A1111's infotext_styles on a parsed infotext: unless Ignore, the styles.csv styles whose texts end its
        prompts (or wrap them) are taken out of "Prompt" and "Negative prompt" (and of the hires prompts where they
        were the same). Returns the styles' names for the Styles list (Apply: even none; Apply if any: when some
        were found), else None (leave the list as it is)."""
        mode = self._options.values.infotext_styles
        if mode == "Ignore" or self._styles is None:
            return None
        prompt, negative = str(parsed.get("Prompt", "")), str(parsed.get("Negative prompt", ""))
        found, bare, bare_negative = styles.extract(list(self._styles.all().values()), prompt, negative)
        for key, before, after in (("Prompt", prompt, bare), ("Negative prompt", negative, bare_negative)):
            if str(parsed.get(f"Hires {key.lower()}", "")) == before and f"Hires {key.lower()}" in parsed:
                parsed[f"Hires {key.lower()}"] = after
            parsed[key] = after
        return found if mode == "Apply" or (mode == "Apply if any" and found) else None

    def overrides(self, settings: dict[str, Any], given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """The request's override_settings (`given`) plus the settings an infotext implies that it does not set,
        that differ from the current values and that are valid here; a warning for each one that is not."""
        current = self._options.values
        overrides, warnings = dict(given), []
        for name, value in settings.items():
            if name in overrides or getattr(current, name) == value:
                continue
            try:
                Settings(**{**current.model_dump(), name: value})
                if name == "sd_vae":
                    self._checkpoints.check_vae_name(value)
            except (ValidationError, BadRequest):
                warnings.append(f"infotext: {name} {value!r} is not available here; the current setting was used")
                continue
            overrides[name] = value
        return overrides, warnings
