"""Tiny hypernetwork files for tests, from a seed, in A1111's exact format: `torch.save` of a dict whose integer
keys are context widths, each mapping to a (k, v) pair of state dicts (`linear.N.weight/bias`, N counting every
part of A1111's Sequential: Linear, activation, LayerNorm, Dropout), plus the structure keys A1111 writes.

The key numbering is worked out here on its own (not by the code under test), so a wrong index there fails."""

from __future__ import annotations

from pathlib import Path

import torch


def module_state_dict(dim: int, g: torch.Generator, layer_structure=(1, 2, 1), activation_func: str | None = "relu",
                      is_layer_norm: bool = False, dropout_structure=None, activate_output: bool = False,
                      scale: float = 0.5, old_names: bool = False) -> dict[str, torch.Tensor]:
    """One module's state dict, numbered as A1111's HypernetworkModule numbers its `linear` Sequential."""
    sd: dict[str, torch.Tensor] = {}
    dropout_structure = dropout_structure or [0] * len(layer_structure)
    index = 0
    for i in range(len(layer_structure) - 1):
        n_in, n_out = int(dim * layer_structure[i]), int(dim * layer_structure[i + 1])
        sd[f"linear.{index}.weight"] = torch.randn(n_out, n_in, generator=g) * scale
        sd[f"linear.{index}.bias"] = torch.randn(n_out, generator=g) * scale
        index += 1
        last = i == len(layer_structure) - 2
        if activation_func not in (None, "linear") and (not last or activate_output):
            index += 1  # activation: no weights (the tests use ones without)
        if is_layer_norm:
            sd[f"linear.{index}.weight"] = 1 + torch.randn(n_out, generator=g) * 0.1
            sd[f"linear.{index}.bias"] = torch.randn(n_out, generator=g) * 0.1
            index += 1
        if dropout_structure[i + 1] > 0:
            index += 1
    if old_names:  # the first files: two Linear layers named linear1 / linear2
        assert list(sd) == ["linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"]
        sd = {k.replace("linear.0", "linear1").replace("linear.1", "linear2"): v for k, v in sd.items()}
    return sd


def hypernetwork_dict(widths=(32, 64), seed: int = 0, name: str = "tiny", layer_structure=(1, 2, 1),
                      activation_func: str | None = "relu", is_layer_norm: bool = False, use_dropout: bool = False,
                      dropout_structure=None, last_layer_dropout: bool = False, activate_output: bool = False,
                      scale: float = 0.5, old_names: bool = False) -> dict:
    """What A1111's Hypernetwork.save writes (the keys `save` writes, in its order)."""
    g = torch.Generator().manual_seed(seed)
    dropouts = dropout_structure
    if dropouts is None and use_dropout:  # A1111's parse_dropout_structure for files without dropout_structure
        dropouts = [0] + [0.3] * (len(layer_structure) - 3) + [0.3 if last_layer_dropout else 0, 0]
    kw = dict(layer_structure=layer_structure, activation_func=activation_func, is_layer_norm=is_layer_norm,
              dropout_structure=dropouts, activate_output=activate_output, scale=scale, old_names=old_names)
    data: dict = {w: (module_state_dict(w, g, **kw), module_state_dict(w, g, **kw)) for w in widths}
    data.update({"step": 1000, "name": name, "layer_structure": list(layer_structure),
                 "activation_func": activation_func, "is_layer_norm": is_layer_norm,
                 "weight_initialization": "Normal", "sd_checkpoint": "abcdef12", "sd_checkpoint_name": "tiny-sd1",
                 "activate_output": activate_output, "use_dropout": use_dropout,
                 "last_layer_dropout": last_layer_dropout})
    if dropout_structure is not None:
        data["dropout_structure"] = list(dropout_structure)
    return data


def write(folder: Path, name: str, **kw) -> Path:
    """models/hypernetworks/NAME.pt holding hypernetwork_dict(**kw)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pt"
    torch.save(hypernetwork_dict(name=name, **kw), path)
    return path
