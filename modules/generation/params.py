"""What to generate: one validated object shared by the UI, the API and the infotext parser.

Field names are AUTOMATIC1111's API names. Validation happens here, once, so every entry point gives
the same clear message for the same bad value.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_SIDE = 4096


class GenerationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = Field(-1, ge=-1, description="-1 picks a random seed")
    sampler_name: str = "DPM++ 2M"
    scheduler: str | None = Field(None, description="Schedule type; None or 'Automatic' uses the sampler's preset")
    steps: int = Field(20, ge=1, le=1000)
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0)
    width: int = 512
    height: int = 512
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=1000, description="Batch count")
    override_settings: dict[str, Any] = Field(default_factory=dict)
    save_images: bool = True

    @field_validator("width", "height")
    @classmethod
    def _side(cls, v: int, info) -> int:
        if v < 64 or v > MAX_SIDE:
            raise ValueError(f"{info.field_name} must be between 64 and {MAX_SIDE} pixels (got {v})")
        if v % 8:
            raise ValueError(f"{info.field_name} must be a multiple of 8 (got {v}; try {v // 8 * 8} or {v // 8 * 8 + 8})")
        return v

    @property
    def total_images(self) -> int:
        return self.batch_size * self.n_iter
