"""The offline promise in one place: every library's switch that keeps it from reaching the network (model
hubs, usage statistics, version checks). `apply()` runs first thing in webui.py, before any of those libraries
is imported, since several read their switches at import time.

What each switch stops:
- HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE, HF_DATASETS_OFFLINE: huggingface_hub, transformers and diffusers never
  ask the hub for a file or a revision (everything this program needs ships with it).
- HF_HUB_DISABLE_TELEMETRY, HF_HUB_DISABLE_IMPLICIT_TOKEN: no usage pings, no token sent anywhere.
- GRADIO_ANALYTICS_ENABLED=False: Gradio's usage statistics and its version check (api.gradio.app).
- DO_NOT_TRACK=1: the cross-tool convention, for any library that honours it.
- RAY_USAGE_STATS_ENABLED=0: Ray (only with --ray-workers / --ray-address) sends no usage statistics.
- `openvino_telemetry` is made unimportable: OpenVINO's converter then uses its own silent stand-in. Without
  this, importing the converter and every `convert_model` call send usage statistics to Google Analytics
  (measured here: ten lookups of www.google-analytics.com for one conversion) unless the user ran
  OpenVINO's `opt_in_out --opt_out`.

A switch the user set in the environment is left as they set it. tests/browser/test_offline.py proves the whole
app stays on loopback with these in place."""

from __future__ import annotations

import os
import sys

ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}

# Modules whose only job is to send usage statistics; their users fall back to a silent stand-in without them.
UNIMPORTABLE = ("openvino_telemetry",)


def apply() -> None:
    """Sets the switches (those the user has not set) and blocks the statistics modules. Idempotent."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    block_statistics_modules()


def block_statistics_modules() -> None:
    """Only the module part of apply(), for code that imports such a library outside webui.py (a benchmark, a
    test): modules/models/openvino_unet.py calls it before it imports openvino. Idempotent."""
    for name in UNIMPORTABLE:
        # None in sys.modules makes `import name` raise ImportError (the import system's own way to block one).
        # A module already imported cannot be taken back; nothing of ours imports these before apply() runs.
        sys.modules.setdefault(name, None)
