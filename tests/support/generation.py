"""txt2img through an engine over the tiny checkpoints: the `engine` fixture and the request most tests start from."""

from __future__ import annotations

import numpy as np
import pytest

from modules.generation.params import GenerationParams
from tests.support.engine import make_engine


@pytest.fixture()
def engine(data_dir):
    e = make_engine(data_dir)
    yield e
    e.queue.stop()


def params(**kw) -> GenerationParams:
    base = dict(prompt="a red circle on a blue background", negative_prompt="green", width=64, height=64, steps=6,
                sampler_name="Euler a", seed=100)
    return GenerationParams(**{**base, **kw})


def pasted_setting(engine, text: str, name: str, default=False) -> tuple:
    """What infotext `text` sets setting `name` to (`default` when it sets nothing): through the page's reader and
    through the API's `infotext` field, where it becomes the job's override."""
    from modules.api import routes, schemas

    page = engine.paste.read(text, txt2img=True).settings.get(name, default)
    request = schemas.Txt2ImgRequest(infotext=text)
    routes.apply_infotext(request, engine)
    return page, (request.override_settings or {}).get(name, default)


def psnr(a, b) -> float:
    """Two images' PSNR in dB (inf when equal)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
