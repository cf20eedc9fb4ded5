"""Where things live: program files, user data, models and outputs.

As in AUTOMATIC1111, `--data-dir` moves everything a user owns (models, outputs, config.json,
caches); `--models-dir` moves only the models. Program files (configs/, the tokenizer) always
come from the repository.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
TOKENIZER_DIR = CONFIGS / "tokenizer"
# The project's own small demo model (a program file, so not moved by --data-dir): listed after the
# user's checkpoints and selected only when there are none.
BUILTIN_MODELS = (ROOT / "models" / "builtin" / "shapes-tiny.safetensors",)
UPSCALER_KINDS = ("ESRGAN", "RealESRGAN", "DAT", "HAT")  # A1111's model-upscaler folders, in its order


@dataclass(frozen=True)
class Paths:
    data: Path
    models: Path
    checkpoint_dirs: tuple[Path, ...]  # searched in this order
    vae_dirs: tuple[Path, ...]
    default_sd1_config: Path
    lora_dirs: tuple[Path, ...] = ()  # models/Lora, models/LyCORIS, --lora-dir
    embeddings_dirs: tuple[Path, ...] = ()  # DATA/embeddings or --embeddings-dir
    hypernetwork_dirs: tuple[Path, ...] = ()  # models/hypernetworks or --hypernetwork-dir
    styles_files: tuple[Path, ...] = field(default=())  # DATA/styles.csv or --styles-file
    # model upscalers: (kind, folder) for models/ESRGAN, RealESRGAN, DAT, HAT or their flags (models/upscalers.py)
    upscaler_dirs: tuple[tuple[str, Path], ...] = ()

    @property
    def outputs(self) -> Path:
        return self.data / "outputs"

    @property
    def taesd_dir(self) -> Path:
        """models/VAE-taesd: the TAESD files (taesd_decoder.pth, ...), as in A1111."""
        return self.models / "VAE-taesd"

    @property
    def openvino_cache(self) -> Path:
        """Where U-Nets converted for the OpenVINO backend are kept."""
        return self.data / "cache" / "openvino"

    @property
    def parked_weights(self) -> Path:
        """Where low-memory mode parks the text encoders' weights between prompts (unnamed files only)."""
        return self.data / "cache" / "parked"

    @property
    def config_file(self) -> Path:
        return self.data / "config.json"

    @property
    def ui_config_file(self) -> Path:
        """A1111's ui-config.json: the page's own defaults (modules/ui/defaults.py)."""
        return self.data / "ui-config.json"

    @property
    def hash_cache(self) -> Path:
        return self.data / "cache.json"

    @property
    def history_db(self) -> Path:
        """The history index of saved images (modules/history.py)."""
        return self.data / "history.sqlite3"

    @property
    def params_file(self) -> Path:
        return self.data / "params.txt"

    def resolve_output_dir(self, folder: str) -> Path:
        """Output folders from settings are relative to the data dir unless absolute."""
        p = Path(folder)
        return p if p.is_absolute() else self.data / p


def from_args(data_dir: str | None = None, models_dir: str | None = None, ckpt_dir: str | None = None,
              vae_dir: str | None = None, config: str | None = None, lora_dir: str | None = None,
              embeddings_dir: str | None = None, styles_files: list[str] | None = None,
              hypernetwork_dir: str | None = None, upscaler_dirs: dict[str, str | None] | None = None) -> Paths:
    """`upscaler_dirs`: a model-upscaler kind ("ESRGAN", "RealESRGAN", "DAT") -> the folder its flag names."""
    data = Path(data_dir).expanduser().resolve() if data_dir else ROOT
    models = Path(models_dir).expanduser().resolve() if models_dir else data / "models"
    sd_dir = models / "Stable-diffusion"
    ckpt_dirs = [Path(ckpt_dir).expanduser().resolve()] if ckpt_dir else []
    ckpt_dirs.append(sd_dir)
    named = upscaler_dirs or {}
    upscalers = tuple((kind, Path(named[kind]).expanduser().resolve() if named.get(kind) else models / kind)
                      for kind in UPSCALER_KINDS)
    vae_dirs = [models / "VAE"]
    if vae_dir:
        vae_dirs.append(Path(vae_dir).expanduser().resolve())
    return Paths(
        data=data,
        models=models,
        checkpoint_dirs=tuple(ckpt_dirs),
        vae_dirs=tuple(vae_dirs),
        default_sd1_config=Path(config).resolve() if config else CONFIGS / "v1-inference.yaml",
        lora_dirs=(Path(lora_dir).expanduser().resolve() if lora_dir else models / "Lora", models / "LyCORIS"),
        embeddings_dirs=(Path(embeddings_dir).expanduser().resolve() if embeddings_dir else data / "embeddings",),
        hypernetwork_dirs=(Path(hypernetwork_dir).expanduser().resolve() if hypernetwork_dir
                           else models / "hypernetworks",),
        styles_files=tuple(Path(f).expanduser().resolve() for f in styles_files) if styles_files
        else (data / "styles.csv",),
        upscaler_dirs=upscalers,
    )


def ensure_dirs(paths: Paths) -> None:
    for d in (paths.data, paths.models, paths.checkpoint_dirs[-1], paths.vae_dirs[0], paths.taesd_dir,
              *paths.lora_dirs[:1], *paths.embeddings_dirs, *paths.hypernetwork_dirs,
              *(folder for _kind, folder in paths.upscaler_dirs[:1])):  # models/ESRGAN: where users look first
        d.mkdir(parents=True, exist_ok=True)
