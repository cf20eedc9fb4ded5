"""Console logging: our messages at INFO, the libraries' chatter kept to real problems."""

from __future__ import annotations

import logging
import os
import warnings


def setup(level: str | None = None) -> None:
    logging.basicConfig(
        level=(level or os.environ.get("SD_WEBUI_LOG_LEVEL") or "INFO").upper(),
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s", datefmt="%H:%M:%S",
    )
    quiet_libraries()


def quiet_libraries() -> None:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    for name in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*upcast_vae.*")
