"""Model families as plug-ins: each one detects its checkpoints, names its config, builds its parts and
its prompt encoder; a new family is one more entry in `families.FAMILIES`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from modules import paths
from modules.models import checkpoint_file, families, ldm_export
from modules.models.families import SD1, SD2
from modules.models.family import BuiltModel, ConfigFiles, FamilyMatch, ModelConfig, SamplingHints, StateDict
from modules.models.prompt_encoder import PromptEncoder
from tests.support import tiny_models
from tests.support.engine import make_manager


def detect(path: Path) -> ModelConfig:
    sd = checkpoint_file.read_state_dict(path)
    return families.detect(path, sd, checkpoint_file.read_metadata(path), paths.CONFIGS / "v1-inference.yaml")


def test_families_are_immutable_with_unique_names():
    names = [f.name for f in families.FAMILIES]
    assert sorted(names) == ["sd1", "sd2", "sdxl", "sdxl_refiner"] and len(set(names)) == len(names)
    assert names[:2] == ["sdxl", "sdxl_refiner"]  # their conditioner keys are asked about first, as in A1111
    for family in families.FAMILIES:
        with pytest.raises(dataclasses.FrozenInstanceError):
            family.name = "changed"
        assert family.sampling.sdxl_schedules == family.name.startswith("sdxl")


def test_detected_configs_name_their_family_size_and_label(tmp_path):
    cases = [
        (tiny_models.build("sd1"), {}, SD1, (512, 512), "SD 1.x"),
        (tiny_models.build("sd1", inpainting=True), {}, SD1, (512, 512), "SD 1.x inpainting"),
        (tiny_models.build("sd2"), {"modelspec.prediction_type": "v"}, SD2, (768, 768), "SD 2.x v-prediction"),
        (tiny_models.build("sd2", inpainting=True), {}, SD2, (512, 512), "SD 2.x inpainting"),
    ]
    for i, (tiny, metadata, family, size, label) in enumerate(cases):
        config = detect(tiny.write(tmp_path / f"m{i}.safetensors", yaml_beside=False, metadata=metadata))
        assert (config.family, config.default_size, config.label) == (family, size, label)
    # a YAML beside the file names the family through its text encoder
    config = detect(tiny_models.build("sd2", prediction_type="v_prediction").write(tmp_path / "beside.safetensors"))
    assert (config.family, config.source, config.prediction_type) == (SD2, "beside", "v_prediction")


@dataclass(frozen=True)
class ToyFamily:
    """A family that claims files whose metadata says `toy`, built like SD 1.x from its own YAML."""
    yaml: Path
    name: str = "toy"
    label: str = "Toy"
    sampling: SamplingHints = field(default_factory=lambda: SamplingHints(sdxl_schedules=True))

    def detect(self, sd: StateDict, metadata: dict) -> FamilyMatch | None:
        return FamilyMatch(False, "epsilon") if metadata.get("family") == "toy" else None

    def describes(self, original: dict) -> bool:
        return False

    def config_file(self, match: FamilyMatch, files: ConfigFiles) -> Path:
        return self.yaml

    def default_size(self, config: ModelConfig) -> tuple[int, int]:
        return 64, 64

    def build(self, config: ModelConfig, sd: StateDict) -> BuiltModel:
        return SD1.build(config, sd)

    def prompt_encoder(self, tokenizer, text_encoder) -> PromptEncoder:
        return SD1.prompt_encoder(tokenizer, text_encoder)


def test_a_new_family_plugs_in_as_one_entry(tmp_path, monkeypatch):
    tiny = tiny_models.build("sd1", seed=4)
    ldm_export.write_yaml(tmp_path / "toy.yaml", tiny.yaml())
    toy = ToyFamily(tmp_path / "toy.yaml")
    folder = tmp_path / "data" / "models" / "Stable-diffusion"
    tiny.write(folder / "toy.safetensors", yaml_beside=False, metadata={"family": "toy"})
    tiny.write(folder / "plain.safetensors", yaml_beside=False)
    monkeypatch.setattr(families, "FAMILIES", (toy, *families.FAMILIES))

    manager = make_manager(tmp_path / "data")
    model = manager.get(manager.checkpoints.find("toy.safetensors"))
    assert model.family is toy and model.config.label == "Toy" and model.config.default_size == (64, 64)
    assert model.family.sampling.sdxl_schedules
    assert model.text.encode("a red circle").shape == (77, tiny.text_encoder.config.hidden_size)
    # files without the toy's mark are still SD 1.x
    assert detect(folder / "plain.safetensors").family is SD1
