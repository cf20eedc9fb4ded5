"""User settings: one typed object, persisted to config.json with atomic writes.

Keys use AUTOMATIC1111's option names so a copied config.json and `/sdapi/v1/options` clients
keep working. Keys we do not know are kept as they are and written back untouched.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modules import fileio

log = logging.getLogger(__name__)

# File formats for saved images: A1111's, as far as Pillow writes them with their infotext.
ImageFormat = Literal["png", "jpg", "jpeg", "webp", "avif"]


class Settings(BaseModel):
    # NaN and infinity are refused for every number (JSON bodies may carry them as NaN / Infinity)
    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)

    # Stable Diffusion
    sd_model_checkpoint: str = Field("", description="Checkpoint title, name or hash")
    sd_vae: str = Field("Automatic", description="'Automatic', 'None' or a file name from models/VAE")
    sd_checkpoints_limit: int = Field(
        1, ge=1, le=10, description="Maximum number of checkpoints loaded at the same time: those used last stay "
                                    "loaded, so switching back to one (a refiner, an X/Y/Z plot over checkpoints) "
                                    "reads nothing. Each holds its whole size in memory (SD 1.5: 4 GB on a CPU, "
                                    "SDXL: 10 GB); when a load or a job needs the room, they are released first. A "
                                    "model in low-memory mode is never kept")
    sd_checkpoints_keep_in_cpu: bool = Field(
        True, description="Only keep one model on device: on a GPU, the others kept loaded wait in RAM (moved "
                          "back when used; off: they stay in the GPU's memory)")
    sd_hypernetwork: str = Field("None", description="Add hypernetwork to prompt: 'None' or a name from "
                                                     "models/hypernetworks, appended as <hypernet:NAME:1.0> to "
                                                     "every prompt that does not name it")
    lora_show_all: bool = Field(False, description="Always show all networks on the Lora page (else only those for "
                                                   "the loaded model's version, as their metadata says)")
    lora_hide_unknown_for_versions: list[Literal["SD1", "SD2", "SDXL"]] = Field(
        default_factory=list, description="Hide networks of unknown versions for model versions")
    lora_preferred_name: Literal["Alias from file", "Filename"] = Field(
        "Alias from file", description="When adding to prompt, refer to Lora by: its alias (the training's output "
                                       "name in the file) or its file name")
    lora_add_hashes_to_infotext: bool = Field(True, description="Add Lora hashes to infotext")
    textual_inversion_add_hashes_to_infotext: bool = Field(True, description="Add Textual Inversion hashes to "
                                                                             "infotext")
    extra_networks_default_multiplier: float = Field(
        1.0, ge=0.0, le=2.0, description="Default multiplier for extra networks: the weight a click on a Lora card "
                                         "(without a preferred weight) or a Hypernetworks card writes")
    sd_vae_overrides_per_model_preferences: bool = Field(
        True, description="Selected VAE overrides per-model preferences: an SD VAE other than Automatic wins over "
                          "a checkpoint's preferred VAE (its card's Edit card) and the VAE beside it; off, those "
                          "two come first")
    sd_vae_encode_method: Literal["Full", "TAESD"] = Field(
        "Full", description="VAE type for encoding img2img inputs and Hires. fix's pixel upscales: 'Full' the "
                            "model's VAE, 'TAESD' the tiny autoencoder (much faster, less faithful; needs "
                            "taesd_encoder.pth or taesdxl_encoder.pth in models/VAE-taesd)")
    sd_vae_decode_method: Literal["Full", "TAESD"] = Field(
        "Full", description="VAE type for decoding the images: 'Full' the model's VAE, 'TAESD' the tiny "
                            "autoencoder (much faster, less detail; needs taesd_decoder.pth or "
                            "taesdxl_decoder.pth in models/VAE-taesd)")
    vae_tiling: Literal["Auto", "Always", "Never"] = Field(
        "Auto", description="Tiled VAE: decode and encode large images a band of rows at a time: the same image "
                            "in less memory, for about 45 % more VAE computation. Auto: images of 1024x1024 pixels "
                            "and more (where the untiled decode needs about 4 GB); Always: every image larger than "
                            "one tile")
    vae_tile_size: int = Field(512, ge=64, le=4096, multiple_of=8,
                               description="Tiled VAE tile size in pixels: a band holds as much as a square of this "
                                           "side at full resolution (smaller: less memory, a little slower)")
    CLIP_stop_at_last_layers: int = Field(1, ge=1, le=12, description="Clip skip")
    comma_padding_backtrack: int = Field(
        20, ge=0, le=74, description="Prompt word wrap length limit: a 75-token chunk whose last comma is within "
                                     "this many tokens of its end ends after that comma, the rest starting the next "
                                     "(0: chunks are cut at 75 wherever)")
    sdxl_clip_l_skip: bool = Field(False, description="Clip skip applies to SDXL's CLIP-L too (its OpenCLIP "
                                                      "encoder always uses its penultimate layer)")
    sdxl_crop_top: int = Field(0, ge=0, le=8192, description="SDXL crop top coordinate (a size condition)")
    sdxl_crop_left: int = Field(0, ge=0, le=8192, description="SDXL crop left coordinate (a size condition)")
    sdxl_refiner_low_aesthetic_score: float = Field(2.5, ge=0.0, le=10.0,
                                                    description="SDXL refiner low aesthetic score (negative prompt)")
    sdxl_refiner_high_aesthetic_score: float = Field(6.0, ge=0.0, le=10.0,
                                                     description="SDXL refiner high aesthetic score (prompt)")
    hires_fix_refiner_pass: Literal["first pass", "second pass", "both passes"] = Field(
        "second pass", description="Hires fix: which pass uses the refiner")
    refiner_switch_by_sample_steps: bool = Field(
        False, description="Switch to the refiner by sampling steps, as A1111 before 1.8, not by noise level")
    use_old_scheduling: bool = Field(
        False, description="Use old prompt editing timelines, as A1111 before 1.6: in [red:green:N], an N under 1 "
                           "is a fraction of the steps and any other a step number, and the hires pass counts in "
                           "the first pass's steps. New: an N with a decimal point is a fraction, any other a step "
                           "number, and the hires pass counts on from the first pass (fractions from 1 to 2)")
    auto_backcompat: bool = Field(
        True, description="Automatic backward compatibility: pasting an infotext from an older A1111 version "
                          "turns on the compatibility settings that version worked with (its `Version` says which)")
    use_downcasted_alpha_bar: bool = Field(
        False, description="Downcast the noise schedule (alphas_cumprod) to 16 bits before sampling, as A1111 "
                           "before 1.7 did: reproduces that version's pictures (infotext: Downcast alphas_cumprod)")
    use_old_karras_scheduler_sigmas: bool = Field(
        False, description="Use old Karras scheduler sigmas: schedules with a sigma range run from 10 to 0.1 "
                           "instead of the model's own range, as early A1111 versions did")
    use_old_hires_fix_width_height: bool = Field(
        False, description="Hires fix: Width and Height set the final size, as in A1111's first hires fix (the "
                           "first pass is about 512x512 pixels in the same proportions; Upscale by and Resize "
                           "width/height to are not used)")
    hires_fix_use_firstpass_conds: bool = Field(
        False, description="Hires fix: encode the hires prompts with the first pass's LoRA and hypernetworks (the "
                           "hires prompt's own then apply to the U-Net only; not with a Hires checkpoint)")
    enable_quantization: bool = Field(
        False, description="Enable quantization in K samplers: the U-Net gets the training timestep nearest each "
                           "noise level rather than one between two (sharper, cleaner results; changes existing "
                           "seeds)")
    randn_source: Literal["CPU", "GPU", "NV"] = Field(
        "CPU", description="Where noise is drawn: CPU gives the same image on every device; GPU the device's own "
                           "generator; NV the numbers NVIDIA GPUs give, on any device")
    tiling: bool = Field(False, description="Tiling: pictures that repeat seamlessly side by side (the U-Net's and "
                                            "the VAE's convolutions wrap around the edges)")
    eta_noise_seed_delta: int = Field(0, ge=0, le=2**64 - 1,  # seed + ENSD seeds a 64-bit generator
                                      description="ENSD: added to the seeds of the sampler's per-step noise")
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
    sgm_noise_multiplier: bool = Field(
        False, description="SGM noise multiplier: a txt2img job's first noise is scaled to sqrt(1 + sigma_max^2) "
                           "rather than sigma_max, as the official SDXL code does; only useful to reproduce its "
                           "pictures (infotext: SGM noise multiplier)")
    sd_noise_schedule: Literal["Default", "Zero Terminal SNR"] = Field(
        "Default", description="Noise schedule for sampling: Zero Terminal SNR rescales the model's schedule so its "
                               "last step is pure noise, for models trained that way (mostly v-prediction ones; "
                               "infotext: Noise Schedule)")
    beta_dist_alpha: float = Field(0.6, gt=0.0, le=1.0, description="Beta schedule alpha")
    beta_dist_beta: float = Field(0.6, gt=0.0, le=1.0, description="Beta schedule beta")
    uni_pc_variant: Literal["bh1", "bh2"] = Field("bh1", description="UniPC variant (B(h) = h or e^h - 1)")
    uni_pc_skip_type: Literal["time_uniform", "time_quadratic", "logSNR"] = Field(
        "time_uniform", description="UniPC skip type: how its steps are spaced")
    uni_pc_order: int = Field(3, ge=1, le=50, description="UniPC order (lowered when there are fewer steps)")
    uni_pc_lower_order_final: bool = Field(True, description="UniPC: lower order for the final steps")
    emphasis: Literal["None", "Ignore", "Original", "No norm"] = Field(
        "Original", description="Prompt emphasis, (word:1.2): 'Original' weighs and restores the mean, 'No norm' "
                                "only weighs, 'Ignore' parses but does not weigh, 'None' reads brackets literally")

    # img2img
    initial_noise_multiplier: float = Field(
        1.0, ge=0.0, le=1.5, description="img2img: the starting noise is multiplied by this (requests may override it)")
    img2img_extra_noise: float = Field(
        0.0, ge=0.0, le=1.0, description="Extra noise multiplier for img2img and hires fix: the starting noise is "
                                         "added once more, this much of it (infotext: Extra noise)")
    img2img_fix_steps: bool = Field(
        False, description="img2img: run exactly the requested steps (off: A1111's default, denoising strength x "
                           "steps + 1 of them; on: a longer schedule of which the last `steps` run)")
    inpainting_mask_weight: float = Field(
        1.0, ge=0.0, le=1.0, description="Inpainting conditioning mask strength (9-channel inpainting models): 1 "
                                         "hides the area to repaint from the model, lower values show it more of "
                                         "the original there, keeping its composition")
    img2img_background_color: str = Field(
        "#ffffff", pattern=r"^#[0-9a-fA-F]{6}$",
        description="img2img: transparent parts of an init image become this colour")
    overlay_inpaint: bool = Field(
        True, description="Overlay original for inpaint: the original's pixels are laid back over the areas that "
                          "were not inpainted (off: the picture as generated; with Inpaint area 'Only masked', the "
                          "generated crop itself, as A1111 gives it)")
    img2img_color_correction: bool = Field(
        False, description="Apply color correction to img2img results to match original colors (needs "
                           "opencv-python-headless, scikit-image and blendmodes, which the launcher installs)")
    return_mask: bool = Field(False, description="For inpainting, include the greyscale mask in results for web "
                                                 "(after each image)")
    return_mask_composite: bool = Field(False, description="For inpainting, include masked composite in results for "
                                                           "web (after each image)")
    depth_map_show: bool = Field(
        False, description="SD 2 depth model: show the depth map it used after the images (near is white), and save "
                           "it beside them (depth-NNNN-SEED.png) when they are saved")
    img2img_batch_show_results_limit: int = Field(
        32, ge=-1, le=1000, description="Show the first N batch img2img results in UI (0: none, -1: all; each is "
                                        "held until the batch ends, and all are saved)")

    # Upscaling
    ESRGAN_tile: int = Field(192, ge=0, le=512, description="Tile size for ESRGAN upscalers (0 = no tiling)")
    ESRGAN_tile_overlap: int = Field(8, ge=0, le=48, description="Tile overlap for ESRGAN upscalers, in pixels (low "
                                                                 "values: visible seams)")
    DAT_tile: int = Field(192, ge=0, le=512, description="Tile size for DAT upscalers (0 = no tiling)")
    DAT_tile_overlap: int = Field(8, ge=0, le=48, description="Tile overlap for DAT upscalers, in pixels")
    upscaler_for_img2img: str | None = Field(
        None, description="Upscaler for img2img: an init image made larger goes through it first (None: Lanczos)")

    # Saving images
    samples_save: bool = Field(True, description="Save every generated image")
    samples_format: ImageFormat = Field(
        "png", description="File format of images: png, jpg/jpeg, webp or avif (JPEG wider or taller than 65535 "
                           "pixels and WebP over 16383 are saved as PNG)")
    samples_filename_pattern: str = Field(
        "", description="Image file name pattern, e.g. [seed]-[prompt_spaces] or [model_name]-[steps]-[cfg]; "
                        "tags: [seed] [seed_first] [seed_last] [steps] [cfg] [width] [height] [sampler] [scheduler] "
                        "[sampler_scheduler] [model_name] [model_hash] [vae_filename] [clip_skip] [denoising] "
                        "[date] [datetime] [datetime<%Y%m%d_%H%M%S>] [job_timestamp] [prompt] [prompt_spaces] "
                        "[prompt_words] [prompt_no_styles] [negative_prompt] [styles] [prompt_hash<8>] "
                        "[image_hash<8>] [batch_number] [batch_size] [generation_number] [none]. "
                        "Empty: [seed] (or [seed]-[prompt_spaces] when not saving to a subfolder)")
    save_images_add_number: bool = Field(
        True, description="Start file names with a number one higher than any in the folder (00042-...)")
    use_original_name_batch: bool = Field(
        True, description="Extras batches (Batch Process, Batch from Directory): name each result after its input "
                          "file, photo-0000.png (off: 00042.png)")
    save_images_replace_action: Literal["Replace", "Add number suffix"] = Field(
        "Replace", description="Without numbers, when the file exists: replace it, or add -1, -2, ... to the name")
    grid_save: bool = Field(True, description="Save a grid of the images of a job with more than one")
    grid_only_if_multiple: bool = Field(True, description="Do not save grids consisting of one picture (off: a job "
                                                          "of one image gets its grid too, saved and shown)")
    grid_format: ImageFormat = Field("png", description="File format of grids: png, jpg/jpeg, webp or avif")
    grid_extended_filename: bool = Field(
        False, description="Name grids with the file name pattern too (grid-0001-SEED), not just grid-0001")
    n_rows: int = Field(-1, ge=-1, le=16, description="Grid rows: -1 about square, 0 one row per batch")
    img_max_size_mp: int = Field(200, ge=1, le=10000, description="Largest grid a script (X/Y/Z plot) may make, "
                                                                  "in megapixels")
    jpeg_quality: int = Field(80, ge=1, le=100, description="Quality of saved JPEG, WebP and AVIF images")
    webp_lossless: bool = Field(False, description="Save WebP images losslessly")
    export_for_4chan: bool = Field(True, description="Save a copy of large images as JPG (NAME.jpg beside the "
                                                     "file, downscaled to the side limit below): when the file is "
                                                     "larger than the size limit, or a side longer than the side "
                                                     "limit")
    img_downscale_threshold: float = Field(4.0, ge=0.0, le=1e6,
                                           description="File size limit for the above option, in MB")
    target_side_length: int = Field(4000, ge=1, le=65535,
                                    description="Width/height limit for the above option, in pixels")
    enable_pnginfo: bool = Field(
        True, description="Write the generation parameters into saved files (PNG text chunk; EXIF UserComment "
                          "in JPEG, WebP and AVIF)")
    save_txt: bool = Field(False, description="Write the generation parameters to a .txt file beside each image")
    # what the infotext names (A1111's Infotext section)
    add_model_name_to_info: bool = Field(True, description="Add model name to infotext (Model)")
    add_model_hash_to_info: bool = Field(True, description="Add model hash to infotext (Model hash)")
    add_vae_name_to_info: bool = Field(True, description="Add VAE name to infotext (VAE)")
    add_vae_hash_to_info: bool = Field(True, description="Add VAE hash to infotext (VAE hash)")
    add_version_to_infotext: bool = Field(True, description="Add program version to infotext (Version)")
    infotext_skip_pasting: list[str] = Field(
        default_factory=list, description="Disregard fields from pasted infotext: these keys (Seed, Size-1, Clip "
                                          "skip, ...) are left out wherever an infotext is read (paste, Send to, "
                                          "the API's infotext field, PNG Info's parameters)")
    disable_weights_auto_swap: bool = Field(
        True, description="Disregard checkpoint information from pasted infotext (paste and Send to leave the top "
                          "bar's checkpoint as it is; off, the checkpoint a pasted Model hash or Model names is "
                          "selected and loaded)")
    infotext_styles: Literal["Ignore", "Apply", "Discard", "Apply if any"] = Field(
        "Apply if any", description="Infer styles from prompts of pasted infotext: Ignore keeps the prompt and the "
                                    "Styles list as they are; Apply takes the styles' text out of the prompt and "
                                    "sets the Styles list to the styles found (even none); Discard takes the text "
                                    "out and leaves the list; Apply if any takes it out and sets the list when a "
                                    "style was found")
    save_incomplete_images: bool = Field(
        False, description="Save the images of an interrupted job or a skipped batch (they are shown either way)")
    save_images_before_highres_fix: bool = Field(
        False, description="Save a copy of each image before the hires fix's second pass (its first pass, "
                           "NNNNN-SEED-before-highres-fix.png)")
    save_images_before_color_correction: bool = Field(
        False, description="Save a copy of image before applying color correction to img2img results "
                           "(NNNNN-SEED-before-color-correction.png)")
    save_mask: bool = Field(False, description="For inpainting, save a copy of the greyscale mask "
                                               "(NNNNN-SEED-mask.png, the mask the original was laid back through)")
    save_mask_composite: bool = Field(False, description="For inpainting, save a masked composite: the generated "
                                                         "pixels inside the mask, transparent outside "
                                                         "(NNNNN-SEED-mask-composite.png)")
    save_init_img: bool = Field(False, description="Save init images when using img2img: each as it was given, "
                                                   "named by its MD5 (in outdir_init_images; infotext: Init image "
                                                   "hash)")

    # Paths for saving
    outdir_samples: str = Field("", description="Output folder for all images (overrides the ones below)")
    outdir_txt2img_samples: str = Field("outputs/txt2img-images", description="Output folder for txt2img images")
    outdir_img2img_samples: str = Field("outputs/img2img-images", description="Output folder for img2img images")
    outdir_extras_samples: str = Field("outputs/extras-images", description="Output folder for Extras images")
    outdir_grids: str = Field("", description="Output folder for all grids (overrides the ones below)")
    outdir_txt2img_grids: str = Field("outputs/txt2img-grids", description="Output folder for txt2img grids")
    outdir_img2img_grids: str = Field("outputs/img2img-grids", description="Output folder for img2img grids")
    outdir_save: str = Field("log/images", description="Folder for images saved with the Save button")
    outdir_init_images: str = Field("outputs/init-images", description="Folder for img2img input images")

    # Saving to a directory
    save_to_dirs: bool = Field(True, description="Save images into a subfolder named by the directory pattern")
    grid_save_to_dirs: bool = Field(True, description="Save grids into a subfolder named by the directory pattern")
    directories_filename_pattern: str = Field(
        "[date]", description="Subfolder name pattern (same tags as file names; / makes nested folders). "
                              "Empty: [prompt_words]")
    directories_max_prompt_words: int = Field(8, ge=1, le=20, description="How many words [prompt_words] keeps")

    # User interface
    return_grid: bool = Field(True, description="Show the grid first among a job's images")
    quicksettings_list: list[str] = Field(
        default_factory=lambda: ["sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers"],
        description="Quicksettings list: settings shown in the top bar rather than in Settings (names such as "
                    "token_merging_ratio; the checkpoint, SD VAE and Clip skip are always there; takes effect when "
                    "the server restarts)")
    extra_options_txt2img: list[str] = Field(
        default_factory=list, description="Settings for txt2img: settings shown on the txt2img tab too, whose values "
                                          "there apply to that tab's jobs (takes effect when the server restarts)")
    extra_options_img2img: list[str] = Field(
        default_factory=list, description="Settings for img2img: settings shown on the img2img tab too, whose values "
                                          "there apply to that tab's jobs (takes effect when the server restarts)")
    extra_options_cols: int = Field(1, ge=1, le=20, description="Number of columns for added settings (takes effect "
                                                                "when the server restarts)")
    extra_options_accordion: bool = Field(False, description="Place added settings into an accordion (takes effect "
                                                             "when the server restarts)")
    interrupt_after_current: bool = Field(
        True, description="Don't Interrupt in the middle: when a job makes more than one image, Interrupt lets the "
                          "image being made finish and stops after it; a second click interrupts at once")
    hidden_tabs: list[str] = Field(
        default_factory=list, description="Hidden UI tabs (takes effect when the server restarts; Settings stays)")
    ui_tab_order: list[str] = Field(
        default_factory=list, description="UI tab order: these tabs first, in this order, then the others (takes "
                                          "effect when the server restarts)")
    hide_samplers: list[str] = Field(
        default_factory=list, description="Hide samplers in user interface: left out of the sampling method lists "
                                          "and the X/Y/Z plot's choices (a pasted infotext and the API still use "
                                          "them; takes effect when the server restarts)")
    send_seed: bool = Field(True, description="Send seed when sending prompt or image to other interface (the "
                                              "results' Send to img2img / inpaint)")
    send_size: bool = Field(True, description="Send size when sending prompt or image to another interface: img2img "
                                              "gets the picture's own size (a Hires. fix result's, not its first "
                                              "pass's)")
    keyedit_precision_attention: float = Field(
        0.1, ge=0.01, le=0.2, description="Ctrl+up/down precision when editing (attention:1.1) in a prompt box")
    keyedit_precision_extra: float = Field(
        0.05, ge=0.01, le=0.2, description="Ctrl+up/down precision when editing <extra networks:0.9>")
    keyedit_delimiters: str = Field(".,\\/!?%^*;:{}=`~() ", max_length=200,
                                    description="Word delimiters when editing the prompt with Ctrl+up/down")
    keyedit_delimiters_whitespace: list[Literal["Tab", "Carriage Return", "Line Feed"]] = Field(
        default_factory=lambda: ["Tab", "Carriage Return", "Line Feed"],
        description="Ctrl+up/down whitespace delimiters")
    keyedit_move: bool = Field(True, description="Alt+left/right moves prompt elements (the text between commas)")

    # Live previews
    live_previews_enable: bool = Field(
        True, description="Show a preview of the image while it is generated (progress's current_image)")
    show_progress_every_n_steps: int = Field(
        10, ge=-1, le=32, description="Show a new live preview every N sampling steps (0: every step; "
                                      "-1: only when a batch is done)")
    show_progress_grid: bool = Field(True, description="Show previews of all images generated in a batch (side by "
                                                       "side; off: the first image's)")
    live_preview_content: Literal["Combined", "Prompt", "Negative prompt"] = Field(
        "Prompt", description="Live preview subject: 'Prompt' shows what the prompt alone predicts (each image's "
                              "first AND part), 'Negative prompt' what the negative prompt alone predicts, "
                              "'Combined' the guided prediction the sampler goes on from")
    live_preview_refresh_period: int = Field(
        1000, ge=10, le=60000, description="How often the page asks for progress and a new preview, in milliseconds")
    show_progress_type: Literal["Approx cheap", "TAESD", "Full"] = Field(
        "Approx cheap", description="Live preview method: 'Approx cheap' turns the latent into colours (costs "
                                    "nothing); 'TAESD' decodes it with the tiny autoencoder (a real picture, "
                                    "kept under 2% of the job's time; needs taesd_decoder.pth or "
                                    "taesdxl_decoder.pth in models/VAE-taesd); 'Full' decodes it with the VAE "
                                    "(the real picture, slow on a CPU)")

    # Optimizations (speed and memory; they apply from the next job, without reloading the model)
    cross_attention_optimization: Literal["Automatic", "sdp", "sub-quadratic", "V1", "None"] = Field(
        "Automatic", description="Cross attention: Automatic/sdp is PyTorch's scaled-dot-product attention "
                                 "(fastest); sub-quadratic computes it in slices (least memory, slower); V1/None "
                                 "the plain original implementation")
    low_memory: Literal["Off", "On", "SDXL only"] = Field(
        "Off", description="Low-memory mode (for machines with 8 GB): the weights are kept in 16 bits and each "
                           "layer is converted to 32 bits as it runs, which halves the memory a model holds on a "
                           "CPU at some cost in speed; the image is the same for a 16-bit checkpoint. The text "
                           "encoders are set aside on disk while the image is sampled. 'SDXL only' "
                           "for SDXL models alone. --lowram, --medvram and --lowvram turn it on, --medvram-sdxl "
                           "for SDXL. The model is loaded again when this changes")
    fp8_storage: Literal["Disable", "Enable for SDXL", "Enable"] = Field(
        "Disable", description="FP8 weight: keep the convolutions' and linear layers' weights of the U-Net and the "
                               "text encoders in 8-bit floats (float8_e4m3fn), widened as each layer runs: a "
                               "quarter of their float32 memory, a half of their float16, at some cost in quality "
                               "and, on a CPU, in speed. 'Enable for SDXL' for SDXL models alone. The model is "
                               "loaded again when this changes. Not on Apple's MPS")
    cache_fp16_weight: bool = Field(
        False, description="Cache FP16 weight for LoRA: with FP8 weights, keep a float16 copy of them in RAM that "
                           "LoRA starts from (better LoRA quality, more memory)")
    batch_cond_uncond: bool = Field(
        True, description="Run the prompt and the negative prompt through the U-Net as one batch (faster; off "
                          "uses less memory)")
    hypertile_enable_unet: bool = Field(
        False, description="Enable Hypertile U-Net: its largest self-attention layers attend within tiles (much "
                           "faster for large images; noticeable change in details of the generated picture; if "
                           "enabled, overrides the setting below)")
    hypertile_enable_unet_secondpass: bool = Field(False, description="Enable Hypertile U-Net for hires fix second "
                                                                      "pass")
    hypertile_max_depth_unet: int = Field(3, ge=0, le=3, description="Hypertile U-Net max depth")
    hypertile_max_tile_unet: int = Field(256, ge=0, le=512, description="Hypertile U-Net max tile size")
    hypertile_swap_size_unet: int = Field(3, ge=0, le=64, description="Hypertile U-Net swap size (how many of the "
                                                                      "largest tile sizes it picks from at random)")
    hypertile_enable_vae: bool = Field(False, description="Enable Hypertile VAE (minimal change in the generated "
                                                          "picture)")
    hypertile_max_depth_vae: int = Field(3, ge=0, le=3, description="Hypertile VAE max depth")
    hypertile_max_tile_vae: int = Field(128, ge=0, le=512, description="Hypertile VAE max tile size")
    hypertile_swap_size_vae: int = Field(3, ge=0, le=64, description="Hypertile VAE swap size")
    pad_cond_uncond: bool = Field(
        False, description="Pad prompt/negative prompt (improves performance when prompt and negative prompt have "
                           "different lengths; changes seeds): the shorter gets empty-prompt chunks, so both go "
                           "through the U-Net in one batch")
    pad_cond_uncond_v0: bool = Field(
        False, description="Pad prompt/negative prompt (v0): the shorter gets its last vector repeated instead "
                           "(wins over the other when both are on, as in A1111)")
    skip_early_cond: float = Field(
        0.0, ge=0.0, le=1.0, description="Ignore negative prompt during early sampling: the first fraction of each "
                                         "pass's steps runs without it (0 skips none, 1 all); faster, and can "
                                         "improve diversity (infotext: Skip Early CFG)")
    s_min_uncond: float = Field(
        0.0, ge=0.0, le=15.0, description="Negative Guidance minimum sigma: skip the negative prompt on every other "
                                          "step once the noise level (sigma) is below this; 0 disables, higher is "
                                          "faster (infotext: NGMS; the API's s_min_uncond overrides it)")
    s_min_uncond_all: bool = Field(
        False, description="Negative Guidance minimum sigma all steps: skip it on every such step, not every "
                           "other one (infotext: NGMS all steps)")
    token_merging_ratio: float = Field(
        0.0, ge=0.0, le=0.9, description="Token merging ratio: the share of tokens the self-attention of the U-Net's "
                                         "full-size layers merges into similar ones (0 disables, higher is faster at "
                                         "large sizes and changes the picture more; infotext: Token merging ratio)")
    token_merging_ratio_img2img: float = Field(
        0.0, ge=0.0, le=0.9, description="Token merging ratio for img2img (only applies if non-zero, and overrides "
                                         "the one above)")
    token_merging_ratio_hr: float = Field(
        0.0, ge=0.0, le=0.9, description="Token merging ratio for the hires fix's second pass (only applies if "
                                         "non-zero, and overrides the ones above; infotext: Token merging ratio hr)")
    unet_backend: Literal["PyTorch", "PyTorch bf16", "OpenVINO", "OpenVINO bf16"] = Field(
        "PyTorch", description="What runs the U-Net on a CPU. 'PyTorch bf16' computes it in bfloat16 "
                               "(torch.autocast) on CPUs that do bfloat16 in hardware (AVX-512 BF16 or AMX; on "
                               "others the job runs in float32 with a note): about 1.5x as fast, with nothing to "
                               "convert or wait for, and images that differ slightly. OpenVINO (needs `pip install "
                               "openvino`) converts "
                               "each checkpoint's U-Net once (20 s for SD 1.5 on 2 cores, kept in cache/openvino) "
                               "and runs it about 11% faster, with images equal to PyTorch's to within rounding; it "
                               "needs about 5 GB more memory for SD 1.5, and jobs it does not cover (a LoRA or "
                               "hypernetwork on the U-Net, low-memory mode, sides not a multiple of 64) run on "
                               "PyTorch with a note. 'OpenVINO bf16' computes in bfloat16: about twice as fast on "
                               "CPUs with AVX-512 BF16 or AMX, and the images differ slightly")

    @field_validator("keyedit_delimiters", mode="before")
    @classmethod
    def _delimiters_with_space(cls, v: Any) -> Any:
        # the default before keyedit_delimiters_whitespace (A1111 1.7, and ours before it), saved by every Apply:
        # the space was a delimiter then without being listed, so it is added
        return v + " " if v == ".,\\/!?%^*;:{}=`~()" else v

    @field_validator("samples_format", "grid_format", mode="before")
    @classmethod
    def _lower_format(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v


# The Settings tab's sections, in A1111's order, with each field in exactly one of them.
SECTIONS: dict[str, tuple[str, ...]] = {
    "Saving images": ("samples_save", "samples_format", "samples_filename_pattern", "save_images_add_number",
                      "use_original_name_batch", "save_images_replace_action", "grid_save", "grid_only_if_multiple",
                      "grid_format", "grid_extended_filename", "n_rows", "img_max_size_mp", "jpeg_quality",
                      "webp_lossless", "export_for_4chan", "img_downscale_threshold", "target_side_length",
                      "enable_pnginfo", "save_txt", "save_incomplete_images", "save_images_before_highres_fix",
                      "save_images_before_color_correction",
                      "save_mask", "save_mask_composite", "save_init_img"),
    "Paths for saving": ("outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples",
                         "outdir_extras_samples", "outdir_grids", "outdir_txt2img_grids", "outdir_img2img_grids",
                         "outdir_save", "outdir_init_images"),
    "Saving to a directory": ("save_to_dirs", "grid_save_to_dirs", "directories_filename_pattern",
                              "directories_max_prompt_words"),
    "Upscaling": ("ESRGAN_tile", "ESRGAN_tile_overlap", "DAT_tile", "DAT_tile_overlap", "upscaler_for_img2img"),
    "Stable Diffusion": ("sd_model_checkpoint", "sd_checkpoints_limit", "sd_checkpoints_keep_in_cpu",
                         "CLIP_stop_at_last_layers", "comma_padding_backtrack", "sdxl_clip_l_skip", "emphasis",
                         "enable_quantization", "randn_source", "tiling", "sd_hypernetwork"),
    "Stable Diffusion XL": ("sdxl_crop_top", "sdxl_crop_left", "sdxl_refiner_low_aesthetic_score",
                            "sdxl_refiner_high_aesthetic_score"),
    "Refiner": ("hires_fix_refiner_pass", "refiner_switch_by_sample_steps"),
    "Compatibility": ("auto_backcompat", "use_old_karras_scheduler_sigmas", "use_old_hires_fix_width_height",
                      "hires_fix_use_firstpass_conds", "use_old_scheduling", "use_downcasted_alpha_bar"),
    "Extra Networks": ("extra_networks_default_multiplier", "lora_show_all", "lora_hide_unknown_for_versions",
                       "lora_preferred_name", "lora_add_hashes_to_infotext",
                       "textual_inversion_add_hashes_to_infotext"),
    "VAE": ("sd_vae", "sd_vae_overrides_per_model_preferences", "sd_vae_encode_method", "sd_vae_decode_method",
            "vae_tiling", "vae_tile_size"),
    "img2img": ("inpainting_mask_weight", "initial_noise_multiplier", "img2img_extra_noise", "img2img_fix_steps",
                "overlay_inpaint",
                "img2img_background_color", "img2img_color_correction", "return_mask", "return_mask_composite",
                "depth_map_show", "img2img_batch_show_results_limit"),
    "Sampler parameters": ("eta_ddim", "eta_ancestral", "s_churn", "s_tmin", "s_tmax", "s_noise", "sigma_min",
                           "sigma_max", "rho", "eta_noise_seed_delta", "always_discard_next_to_last_sigma",
                           "sgm_noise_multiplier", "sd_noise_schedule",
                           "beta_dist_alpha", "beta_dist_beta", "uni_pc_variant", "uni_pc_skip_type", "uni_pc_order",
                           "uni_pc_lower_order_final"),
    "User interface": ("quicksettings_list", "interrupt_after_current", "hidden_tabs", "ui_tab_order",
                       "hide_samplers", "return_grid", "send_seed", "send_size", "keyedit_precision_attention",
                       "keyedit_precision_extra", "keyedit_delimiters", "keyedit_delimiters_whitespace",
                       "keyedit_move"),
    "Settings in UI": ("extra_options_txt2img", "extra_options_img2img", "extra_options_cols",
                       "extra_options_accordion"),
    "Infotext": ("add_model_name_to_info", "add_model_hash_to_info", "add_vae_name_to_info", "add_vae_hash_to_info",
                 "add_version_to_infotext", "disable_weights_auto_swap", "infotext_skip_pasting",
                 "infotext_styles"),
    "Hypertile": ("hypertile_enable_unet", "hypertile_enable_unet_secondpass", "hypertile_max_depth_unet",
                  "hypertile_max_tile_unet", "hypertile_swap_size_unet", "hypertile_enable_vae",
                  "hypertile_max_depth_vae", "hypertile_max_tile_vae", "hypertile_swap_size_vae"),
    "Live previews": ("live_previews_enable", "show_progress_grid", "show_progress_every_n_steps", "show_progress_type",
                      "live_preview_content", "live_preview_refresh_period"),
    "Optimizations": ("cross_attention_optimization", "pad_cond_uncond", "pad_cond_uncond_v0", "skip_early_cond",
                      "s_min_uncond", "s_min_uncond_all", "token_merging_ratio", "token_merging_ratio_img2img",
                      "token_merging_ratio_hr", "batch_cond_uncond", "low_memory", "fp8_storage",
                      "cache_fp16_weight", "unet_backend"),
}


def section_of(name: str) -> str | None:
    """The Settings tab section a field is shown in (None for keys we only keep, such as A1111's others)."""
    return next((title for title, names in SECTIONS.items() if name in names), None)


class SettingsStore:
    """The live Settings plus the file they persist to (none for `path=None`: a cluster replica's, which the
    front's jobs set). Changes are validated, then saved."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            for leftover in fileio.remove_stale_temps(self.path):  # a write cut short by a kill
                log.info("Removed %s, left by an interrupted write of %s", leftover.name, self.path.name)
        self._lock = threading.Lock()
        self.values = self._load()

    def _load(self) -> Settings:
        raw = (fileio.read_json(self.path) if self.path is not None else None) or {}
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
            self._write()

    def save(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        if self.path is not None:
            fileio.atomic_write_json(self.path, self.values.model_dump())
