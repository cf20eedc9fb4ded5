"""What to generate: one validated object shared by the UI, the API and the infotext parser.

Field names are AUTOMATIC1111's API names. Validation happens here, once, so every entry point gives
the same clear message for the same bad value.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from PIL import Image
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from modules import images, prompt_syntax
from modules.limits import Limits

MAX_SIDE = 4096


def _image(value: Any, info: ValidationInfo) -> Image.Image:
    """An init image or mask: a PIL image as it is, or base64 / a data URL opened: its size checked from its
    header against the validation context's `max_input_pixels` (the server's limit), its pixels decoded by
    the job that uses it (in the queue), not now."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, str):
        limit = (info.context or {}).get("max_input_pixels", Limits().max_input_pixels)
        return images.decode_base64_image(value, limit, lazy=True)
    raise ValueError("expected an image as base64 text")


InputImage = Annotated[Image.Image, BeforeValidator(_image)]


class GenerationParams(BaseModel):
    # NaN and infinity are refused for every number (JSON bodies may carry them as NaN / Infinity)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = Field(-1, ge=-1, description="-1 picks a random seed")
    sampler_name: str = "DPM++ 2M"
    scheduler: str | None = Field(None, description="Schedule type; None or 'Automatic' uses the sampler's preset")
    subseed: int = Field(-1, ge=-1, description="Variation seed; -1 picks a random one")
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0, description="Variation strength: 0 the seed's noise, "
                                                                       "1 the variation seed's")
    seed_resize_from_w: int = Field(-1, ge=-1, le=MAX_SIDE, description="Resize seed from width (pixels; -1/0: off)")
    seed_resize_from_h: int = Field(-1, ge=-1, le=MAX_SIDE, description="Resize seed from height (pixels; -1/0: off)")
    eta: float | None = Field(None, ge=0.0, description="None: the setting (ancestral/SDE 1, DDIM 0)")
    s_churn: float | None = Field(None, ge=0.0, description="Euler/Heun/DPM2 churn; None: the setting")
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    s_min_uncond: float | None = Field(None, ge=0.0, description="Negative Guidance minimum sigma (NGMS); None: the "
                                                                  "setting s_min_uncond")
    enable_hr: bool = Field(False, description="Hires. fix (txt2img)")
    denoising_strength: float | None = Field(None, ge=0.0, le=1.0, description="txt2img: the hires pass's (None: 0.7)")
    hr_scale: float = Field(2.0, gt=0.0, le=8.0)
    hr_upscaler: str | None = Field(None, description="Latent (default), its variants, None, Lanczos, Nearest or "
                                                      "a model upscaler's name (GET /sdapi/v1/upscalers)")
    hr_second_pass_steps: int = Field(0, ge=0, le=1000, description="0: the same as steps")
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIDE)
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIDE)
    hr_checkpoint_name: str | None = Field(None, description="Hires checkpoint: the checkpoint the hires pass runs "
                                                              "on; None, '' or 'Use same checkpoint': the job's")
    hr_sampler_name: str | None = Field(None, description="None or 'Use same sampler': the first pass's")
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    firstpass_image: InputImage | None = Field(
        None, description="Hires. fix from this picture instead of a first pass (A1111's; each image of a batch "
                          "starts from it). Used only with enable_hr")
    refiner_checkpoint: str | None = Field(None, description="The checkpoint sampling switches to near the end; "
                                                             "None, '' or 'None': no refiner")
    refiner_switch_at: float | None = Field(None, ge=0.0, le=1.0, description="Switch at this fraction of the "
                                            "denoising (A1111's 0.8 in its page); None: from the first step")
    steps: int = Field(20, ge=1, le=1000)
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0)
    width: int = 512
    height: int = 512
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=1000, description="Batch count")
    tiling: bool | None = Field(None, description="Tiling: a picture that repeats seamlessly side by side; "
                                                  "None: the setting `tiling`")
    override_settings: dict[str, Any] = Field(default_factory=dict)
    save_images: bool = True
    styles: list[str] = Field(default_factory=list, description="Names from styles.csv merged into the prompts")
    disable_extra_networks: bool = Field(False, description="Remove <lora:...> tags from the prompt, apply none")

    @field_validator("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")
    @classmethod
    def _prompt_length(cls, v: str, info) -> str:
        """At most prompt_syntax.MAX_PROMPT_CHARS characters, checked before anything reads the text (its
        schedule has a text per step)."""
        problem = prompt_syntax.length_problem(info.field_name, v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("width", "height")
    @classmethod
    def _side(cls, v: int, info) -> int:
        if v < 64 or v > MAX_SIDE:
            raise ValueError(f"{info.field_name} must be between 64 and {MAX_SIDE} pixels (got {v})")
        if v % 8:
            raise ValueError(f"{info.field_name} must be a multiple of 8 "
                             f"(got {v}; try {v // 8 * 8} or {v // 8 * 8 + 8})")
        return v

    @property
    def total_images(self) -> int:
        return self.batch_size * self.n_iter




SOFT_INPAINTING_ENABLED = "Soft inpainting enabled"


class SoftInpainting(BaseModel):
    """A1111's Soft inpainting (its built-in extension): at every step the init latent and the model's latent are
    blended by the unrounded mask raised to a power that follows the noise level, and at the end the original
    pixels are laid back wherever the picture changed little. Field names are A1111's controls' ids, the
    bounds its sliders' (`title`: the page's label)."""
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    mask_blend_power: float = Field(1.0, ge=0, le=8, title="Schedule bias",
                                    description="Below 1 keeps more of the original late in sampling, above 1 early")
    mask_blend_scale: float = Field(0.5, ge=0, le=8, title="Preservation strength",
                                    description="How strongly partly masked content keeps the original")
    inpaint_detail_preservation: float = Field(4.0, ge=1, le=32, title="Transition contrast boost",
                                               description="Keeps the contrast that blending partly masked areas "
                                                           "loses")
    composite_mask_influence: float = Field(0.0, ge=0, le=1, title="Mask influence",
                                            description="How much the mask biases the difference threshold")
    composite_difference_threshold: float = Field(0.5, ge=0, le=8, title="Difference threshold",
                                                  description="How much an area can change before the original is "
                                                              "no longer laid back over it")
    composite_difference_contrast: float = Field(2.0, ge=0, le=8, title="Difference contrast",
                                                 description="How sharp that transition is")

    # the infotext keys A1111 writes after "Soft inpainting enabled: True", in its order
    KEYS: ClassVar[dict[str, str]] = {
        "mask_blend_power": "Soft inpainting schedule bias",
        "mask_blend_scale": "Soft inpainting preservation strength",
        "inpaint_detail_preservation": "Soft inpainting transition contrast boost",
        "composite_mask_influence": "Soft inpainting mask influence",
        "composite_difference_threshold": "Soft inpainting difference threshold",
        "composite_difference_contrast": "Soft inpainting difference contrast",
    }

    # A1111's sliders' steps (their bounds are the fields')
    STEPS: ClassVar[dict[str, float]] = {
        "mask_blend_power": 0.1, "mask_blend_scale": 0.05, "inpaint_detail_preservation": 0.5,
        "composite_mask_influence": 0.05, "composite_difference_threshold": 0.25,
        "composite_difference_contrast": 0.25,
    }

    @classmethod
    def bounds(cls, name: str) -> tuple[float, float]:
        metadata = cls.model_fields[name].metadata
        return (next(m.ge for m in metadata if hasattr(m, "ge")), next(m.le for m in metadata if hasattr(m, "le")))

    @classmethod
    def info_args(cls) -> list[dict[str, Any]]:
        """The arguments as A1111's /script-info lists them: the enable box, then the sliders."""
        out: list[dict[str, Any]] = [dict(label="Soft inpainting", value=False)]
        for name, info in cls.model_fields.items():
            low, high = cls.bounds(name)
            out.append(dict(label=info.title, value=info.default, minimum=low, maximum=high, step=cls.STEPS[name]))
        return out

    def infotext_fields(self) -> dict[str, Any]:
        """The keys A1111 adds to an image's infotext, numbers written as its page sends them (1, not 1.0)."""
        out: dict[str, Any] = {SOFT_INPAINTING_ENABLED: True}
        for name, key in self.KEYS.items():
            value = getattr(self, name)
            out[key] = int(value) if float(value).is_integer() else value
        return out

    @classmethod
    def from_script_args(cls, args: list[Any]) -> "SoftInpainting | None":
        """A1111's script arguments (`alwayson_scripts: {"soft inpainting": {"args": [...]}}`): enabled, then the
        six numbers in KEYS' order; those left out keep their defaults. None when it is off."""
        if not isinstance(args, list):
            raise ValueError("soft inpainting: args must be a list [enabled, schedule bias, preservation strength, "
                             "transition contrast boost, mask influence, difference threshold, difference contrast]")
        if len(args) > 1 + len(cls.KEYS):
            raise ValueError(f"soft inpainting: at most {1 + len(cls.KEYS)} args (got {len(args)})")
        if not args or not args[0]:
            return None
        return cls(**dict(zip(cls.KEYS, args[1:])))

    def script_args(self) -> list[Any]:
        return [True, *(getattr(self, name) for name in self.KEYS)]

    @classmethod
    def from_infotext(cls, parsed: dict[str, Any]) -> "SoftInpainting | None":
        """The settings an infotext (parsed) gives; None when it does not say `Soft inpainting enabled: True`.
        ValueError naming a key whose value is not a number."""
        if str(parsed.get(SOFT_INPAINTING_ENABLED, "")).strip().lower() != "true":
            return None
        values = {}
        for name, key in cls.KEYS.items():
            if key in parsed:
                try:
                    values[name] = float(parsed[key])
                except (TypeError, ValueError):
                    raise ValueError(f"infotext: {key} {parsed[key]!r} is not a number") from None
        return cls(**values)


class Img2ImgParams(GenerationParams):
    """img2img and inpainting: A1111's field names and (UI) defaults. `width` x `height` is the size the
    image is processed at. With several init images, one batch holds one of each (A1111's rule)."""
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    init_images: list[InputImage] = Field(default_factory=list)
    resize_mode: int = Field(0, ge=0, le=3, description="0 Just resize, 1 Crop and resize, 2 Resize and fill, "
                                                         "3 Just resize (latent upscale)")
    denoising_strength: float = Field(0.75, description="0 keeps the image, 1 replaces it")
    image_cfg_scale: float | None = Field(
        None, description="InstructPix2Pix models only (none are supported): ignored, as A1111 does for other models")
    mask: InputImage | None = Field(None, description="White = repaint")
    mask_blur_x: int = Field(4, ge=0, le=256)
    mask_blur_y: int = Field(4, ge=0, le=256)
    mask_blur: int | None = Field(None, ge=0, le=256, description="Sets mask_blur_x and mask_blur_y")
    mask_round: bool = True
    latent_mask: InputImage | None = Field(
        None, description="With a mask: what the latents are kept by at every step (white = repaint), used as it "
                          "is (A1111's latent_mask: not blurred, inverted or cropped); None: the mask as prepared")
    inpainting_fill: int = Field(0, ge=0, le=3, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(False, description="Inpaint area: False whole picture, True only masked")
    inpaint_full_res_padding: int = Field(32, ge=0, le=1024)
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="0 inpaint masked, 1 inpaint not masked")
    initial_noise_multiplier: float | None = Field(None, ge=0, description="None: 1.0")
    soft_inpainting: SoftInpainting | None = Field(
        None, description="With a mask: A1111's Soft inpainting (the mask is then not rounded); None: off")
    color_correction_image: InputImage | None = Field(
        None, description="With the setting img2img_color_correction: the picture results are corrected towards "
                          "(Loopback's original init image); None: each init image as it is encoded")

    @field_validator("denoising_strength")
    @classmethod
    def _strength(cls, v: float) -> float:
        if not 0 <= v <= 1:
            raise ValueError(f"denoising_strength must be between 0 and 1 (got {v})")
        return v

    @model_validator(mode="after")
    def _images_and_blur(self) -> "Img2ImgParams":
        if not self.init_images:
            raise ValueError("init_images: at least one init image is required")
        n = len(self.init_images)
        if n > 1:
            if n > self.batch_size:
                raise ValueError(f"init_images: {n} images but batch_size is {self.batch_size}; "
                                 "send one image, or at most batch_size images (one per image of a batch)")
            self.batch_size = n  # A1111: a batch is the init images, one each
        if self.mask_blur is not None:
            self.mask_blur_x = self.mask_blur_y = self.mask_blur
        return self
