"""User settings: one typed object, persisted to config.json with atomic writes.

Keys use AUTOMATIC1111's option names so a copied config.json and `/sdapi/v1/options` clients
keep working. Keys we do not know are kept as they are and written back untouched.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modules import fileio

log = logging.getLogger(__name__)


class Settings(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    # Stable Diffusion
    sd_model_checkpoint: str = Field("", description="Checkpoint title, name or hash")
    sd_vae: str = Field("Automatic", description="'Automatic', 'None' or a file name from models/VAE")
    CLIP_stop_at_last_layers: int = Field(1, ge=1, le=12, description="Clip skip")
    randn_source: Literal["CPU", "GPU", "NV"] = Field(
        "CPU", description="Where noise is drawn: CPU gives the same image on every device; GPU the device's own "
                           "generator; NV the numbers NVIDIA GPUs give, on any device")
    eta_noise_seed_delta: int = Field(0, ge=0, description="ENSD: added to the seeds of the sampler's per-step noise")
    eta_ancestral: float = Field(1.0, ge=0.0, le=1.0, description="Eta for ancestral and SDE samplers")
    eta_ddim: float = Field(0.0, ge=0.0, le=1.0, description="Eta for DDIM")
    s_churn: float = Field(0.0, ge=0.0, le=100.0, description="Sigma churn (Euler, Heun, DPM2)")
    s_tmin: float = Field(0.0, ge=0.0, le=10.0, description="Sigma tmin")
    s_tmax: float = Field(0.0, ge=0.0, le=999.0, description="Sigma tmax (0: infinity)")
    s_noise: float = Field(1.0, ge=0.0, le=1.1, description="Sigma noise")
    sigma_min: float = Field(0.0, ge=0.0, description="Schedule min sigma (0: the model's, ~0.03)")
    sigma_max: float = Field(0.0, ge=0.0, description="Schedule max sigma (0: the model's, ~14.6)")
    rho: float = Field(0.0, ge=0.0, description="Schedule rho (0: Karras 7, Polyexponential 1)")
    always_discard_next_to_last_sigma: bool = Field(False, description="Drop the penultimate sigma for every sampler")
    beta_dist_alpha: float = Field(0.6, gt=0.0, le=1.0, description="Beta schedule alpha")
    beta_dist_beta: float = Field(0.6, gt=0.0, le=1.0, description="Beta schedule beta")
    emphasis: Literal["None", "Ignore", "Original", "No norm"] = Field(
        "Original", description="Prompt emphasis, (word:1.2): 'Original' weighs and restores the mean, 'No norm' "
                                "only weighs, 'Ignore' parses but does not weigh, 'None' reads brackets literally")

    # img2img
    initial_noise_multiplier: float = Field(
        1.0, ge=0.0, le=1.5, description="img2img: the starting noise is multiplied by this (requests may override it)")
    img2img_background_color: str = Field(
        "#ffffff", pattern=r"^#[0-9a-fA-F]{6}$",
        description="img2img: transparent parts of an init image become this colour")

    # Saving
    samples_save: bool = Field(True, description="Save every generated image")
    grid_save: bool = Field(True, description="Save a grid of the images of a job with more than one")
    return_grid: bool = Field(True, description="Show the grid first among a job's images")
    n_rows: int = Field(-1, ge=-1, le=16, description="Grid rows: -1 about square, 0 one row per batch")
    samples_format: Literal["png"] = "png"
    enable_pnginfo: bool = Field(True, description="Write generation parameters into the PNG")
    save_to_dirs: bool = Field(True, description="Save into a subfolder per day")
    outdir_samples: str = Field("", description="Output folder for all images (overrides the ones below)")
    outdir_txt2img_samples: str = "outputs/txt2img-images"
    outdir_img2img_samples: str = "outputs/img2img-images"
    outdir_extras_samples: str = "outputs/extras-images"
    outdir_grids: str = Field("", description="Output folder for all grids (overrides the ones below)")
    outdir_txt2img_grids: str = "outputs/txt2img-grids"
    outdir_img2img_grids: str = "outputs/img2img-grids"
    outdir_save: str = Field("log/images", description="Folder for images saved with the Save button")
    outdir_init_images: str = Field("outputs/init-images", description="Folder for img2img input images")

    # Live previews
    live_previews_enable: bool = Field(
        True, description="Show a preview of the image while it is generated (progress's current_image)")


class SettingsStore:
    """The live Settings plus the file they persist to. Changes are validated, then saved."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.values = self._load()

    def _load(self) -> Settings:
        raw = fileio.read_json(self.path) or {}
        try:
            return Settings(**raw)
        except ValidationError as e:
            # A bad value in config.json should not stop the program: keep the good ones.
            bad = {str(err["loc"][0]) for err in e.errors()}
            log.warning("config.json: ignoring invalid values for %s", ", ".join(sorted(bad)))
            return Settings(**{k: v for k, v in raw.items() if k not in bad})

    def get(self, key: str) -> Any:
        return getattr(self.values, key)

    def update(self, changes: dict[str, Any]) -> None:
        """Validate all changes first, apply them together, then write config.json."""
        with self._lock:
            merged = {**self.values.model_dump(), **changes}
            self.values = Settings(**merged)
            fileio.atomic_write_json(self.path, self.values.model_dump())

    def save(self) -> None:
        with self._lock:
            fileio.atomic_write_json(self.path, self.values.model_dump())
