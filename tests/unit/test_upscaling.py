"""Upscaling as A1111 does it (modules/upscaling: the passes, the tiles and their blending) and the model upscalers
(modules/models/upscalers: the folders and names, the safe loading through spandrel, BGR tiles), with tiny
random-weight models in the real key layouts (tests/support/upscalers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from modules import devices, paths, postprocessing, upscaling
from modules.models import upscalers
from modules.models.checkpoint_file import CheckpointError
from modules.models.upscalers import UpscalerError, UpscalerModels
from modules.postprocessing import ExtrasParams
from tests.support.upscalers import compact_state_dict, esrgan_state_dict, write

CPU = devices.DevicePlan(torch.device("cpu"), torch.float32, torch.float32)
NEAREST = Image.Resampling.NEAREST


def picture(size=(40, 24)) -> Image.Image:
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    if min(size) > 12:
        ImageDraw.Draw(image).ellipse((4, 4, size[0] - 4, size[1] - 4), outline=(255, 255, 0), width=2)
    return image


def double_nearest(tile: Image.Image) -> Image.Image:
    """A stand-in model: 2x nearest, which depends only on each pixel, so tiling must not change its result."""
    return tile.resize((tile.width * 2, tile.height * 2), NEAREST)


# --- A1111's tile layout and blending -----------------------------------------------------------------------

@pytest.mark.parametrize("length,tile,overlap,starts", [
    # A1111's split_grid: ceil((length - overlap) / (tile - overlap)) tiles, spread evenly, the last flush
    (192, 192, 8, [0]),
    (200, 192, 8, [0, 8]),
    (500, 192, 8, [0, 154, 308]),
    (100, 192, 8, [-92]),  # shorter than a tile: one tile starting before the image (padded with black)
    (64, 16, 4, [0, 12, 24, 36, 48]),
    (8, 192, 8, [-184]),  # no longer than the overlap: one tile (A1111 counts none, and makes a black image)
])
def test_tile_origins_are_a1111s(length, tile, overlap, starts):
    assert upscaling.tile_origins(length, tile, overlap) == starts
    assert upscaling.tile_count(length, length, tile, overlap) == len(starts) ** 2


@pytest.mark.parametrize("size,tile,overlap", [((40, 24), 16, 4), ((40, 24), 8, 2), ((10, 7), 16, 4),
                                               ((33, 17), 12, 0), ((40, 24), 0, 8)])
def test_tiles_are_put_back_where_they_came_from(size, tile, overlap):
    """With a model that depends on each pixel alone, the tiled result is the untiled one, pixel for pixel: every
    tile lands where it was cut, and blending a pixel with itself leaves it as it is."""
    image = picture(size)
    done = []
    out = upscaling.tiled(image, double_nearest, tile, overlap, on_tile=lambda i, n: done.append((i, n)))
    assert out.size == (size[0] * 2, size[1] * 2)
    assert out.tobytes() == double_nearest(image).tobytes()
    count = upscaling.tile_count(*size, tile, overlap)
    assert done == [(i + 1, count) for i in range(count)]


def test_overlaps_are_blended_with_a1111s_ramp():
    """Two tiles side by side, the first all 0 and the second all 200: across the overlap the result rises along
    A1111's 8-bit ramp, floor(i * 255 / overlap), blended over what the first tile left."""
    image = Image.new("RGB", (24, 16))
    values = iter([0, 200])

    def flat(tile: Image.Image) -> Image.Image:
        return Image.new("RGB", (tile.width * 2, tile.height * 2), (next(values),) * 3)

    out = np.asarray(upscaling.tiled(image, flat, 16, 8))[:, :, 0]
    assert upscaling.tile_origins(24, 16, 8) == [0, 8]
    overlap = 16  # 8 pixels, upscaled 2x
    ramp = np.floor(np.arange(overlap) * 255 / overlap)
    expected = 200 * ramp / 255
    assert (out[:, :16] == 0).all() and (out[:, 32:] == 200).all()
    assert np.abs(out[0, 16:32] - expected).max() <= 1  # PIL's rounding of the masked paste
    assert (np.diff(out[0, 16:32].astype(int)) >= 0).all() and (out == out[0]).all()


def test_a_check_that_raises_stops_between_tiles():
    calls = []

    def check():
        if len(calls) == 2:
            raise KeyboardInterrupt

    def run(tile):
        calls.append(tile.size)
        return double_nearest(tile)

    with pytest.raises(KeyboardInterrupt):
        upscaling.tiled(picture((40, 40)), run, 16, 4, check)
    assert len(calls) == 2


# --- A1111's Upscaler.upscale and resize_image --------------------------------------------------------------

def counting(factor: int, log: list):
    def one_pass(image):
        log.append(image.size)
        return image.resize((image.width * factor, image.height * factor), NEAREST)
    return one_pass


@pytest.mark.parametrize("scale,factor,passes,size", [
    (4, 4, 1, (160, 96)),  # one pass reaches it
    (4, 2, 2, (160, 96)),  # a 2x model twice
    (3, 4, 1, (120, 72)),  # one 4x pass, then Lanczos down to 3x
    (16, 2, 3, (640, 384)),  # at most three passes (8x), then Lanczos up to 16x
    (1, 4, 1, (40, 24)),  # scale 1 still runs the model once (A1111), then back to the size
    (0.5, 4, 0, (16, 8)),  # an image already larger than asked: no pass, Lanczos down (to multiples of 8)
])
def test_upscale_repeats_the_pass_as_a1111(scale, factor, passes, size):
    log: list = []
    out = upscaling.upscale(picture((40, 24)), scale, counting(factor, log))
    assert len(log) == passes and out.size == size


def test_resize_goes_through_the_upscaler_only_to_enlarge():
    log: list = []
    image = picture((40, 24))
    assert upscaling.resize(image, 100, 60, lambda s: counting(4, log)).size == (100, 60) and len(log) == 1
    assert upscaling.resize(image, 20, 12, lambda s: counting(4, log)).size == (20, 12) and len(log) == 1
    mask = image.convert("L")  # a mask is always Lanczos, as in A1111
    assert upscaling.resize(mask, 80, 48, lambda s: counting(4, log)).size == (80, 48) and len(log) == 1
    plain = upscaling.resize(image, 80, 48, None)
    assert plain.tobytes() == image.resize((80, 48), Image.Resampling.LANCZOS).tobytes()


# --- model files: folders, names, safe loading --------------------------------------------------------------

def folders(root):
    return tuple((kind, root / kind) for kind in paths.UPSCALER_KINDS)


def test_files_are_listed_by_a1111s_names_sorted_first_folder_wins(tmp_path, caplog):
    write(tmp_path / "ESRGAN" / "4x-Tiny.pth", esrgan_state_dict())
    write(tmp_path / "ESRGAN" / "sub" / "b-model.safetensors", esrgan_state_dict(1))
    write(tmp_path / "RealESRGAN" / "RealESRGAN_x4plus.pth", esrgan_state_dict(2), wrap="params_ema")
    write(tmp_path / "RealESRGAN" / "realesr-general-x4v3.pth", compact_state_dict(4), wrap="params")
    write(tmp_path / "DAT" / "DAT_x2.pth", compact_state_dict(2))
    write(tmp_path / "HAT" / "4x-Tiny.pth", esrgan_state_dict(3))  # same name as the ESRGAN one
    (tmp_path / "ESRGAN" / "notes.txt").write_text("not a model")
    found = UpscalerModels(folders(tmp_path), CPU).files()
    assert [(f.name, f.kind, f.scale) for f in found] == [
        ("4x-Tiny", "ESRGAN", 4), ("b-model", "ESRGAN", 4), ("DAT x2", "DAT", 2),
        ("R-ESRGAN 4x+", "RealESRGAN", 4), ("R-ESRGAN General 4xV3", "RealESRGAN", 4)]
    assert "HAT" in caplog.text and "4x-Tiny" in caplog.text  # the one left out is named
    assert found[2].tile_settings == ("DAT_tile", "DAT_tile_overlap")
    assert found[0].tile_settings == ("ESRGAN_tile", "ESRGAN_tile_overlap")


@pytest.mark.parametrize("name,state,wrap,arch,scale", [
    ("a.pth", esrgan_state_dict(), None, "ESRGAN", 4),
    ("b.safetensors", esrgan_state_dict(), None, "ESRGAN", 4),
    ("c.pth", esrgan_state_dict(), "params_ema", "ESRGAN", 4),  # Real-ESRGAN's files
    ("d.pth", compact_state_dict(scale=2), "params", "Compact", 2),
])
def test_models_load_through_the_safe_loader(tmp_path, name, state, wrap, arch, scale):
    path = write(tmp_path / name, state, wrap)
    model = upscalers.load_descriptor(path, torch.device("cpu"), half=False)
    assert model.architecture.id == arch and model.scale == scale
    assert next(model.model.parameters()).dtype == torch.float32


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_pickle_that_runs_code_is_refused_and_not_run(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"conv_first.weight": torch.zeros(1), "x": _Payload()}, path)
    with pytest.raises(CheckpointError, match="Refused to load evil.pth"):
        upscalers.load_descriptor(path, torch.device("cpu"), half=False)
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("content,needle", [
    ({"something.else": torch.zeros(3)}, "is not an upscaler model this program knows"),
    (b"\x80\x04not really a pickle", "Nothing in it was run"),
    ([1, 2, 3], "does not hold a model's weights"),
])
def test_a_file_that_is_no_upscaler_says_why(tmp_path, content, needle):
    path = tmp_path / "odd.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=needle):
        upscalers.load_descriptor(path, torch.device("cpu"), half=False)


def test_tiles_go_to_the_model_in_bgr_and_come_back_rounded(tmp_path):
    """A1111's upscale_pil_patch: BGR in, values / 255, the output clamped, times 255 and rounded, back to RGB. The
    reference is the model called directly; feeding it RGB instead gives another image (the weights are not
    symmetric in the channels), so this fails if the order is wrong."""
    path = write(tmp_path / "m.pth", compact_state_dict(scale=2))
    models = UpscalerModels((("ESRGAN", tmp_path),), CPU)
    item = models.find("m")
    image = picture((20, 12))
    out = models.model_pass(item, 0, 0)(image)
    model = upscalers.load_descriptor(path, torch.device("cpu"), half=False)

    def direct(channels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(channels.transpose(2, 0, 1)) / 255)[None].float()
        with torch.no_grad():
            y = model(x)[0].clamp(0, 1).numpy()
        return (255.0 * np.moveaxis(y, 0, 2)).round().astype(np.uint8)

    rgb = np.asarray(image)
    assert np.array_equal(np.asarray(out), direct(rgb[:, :, ::-1])[:, :, ::-1])
    assert not np.array_equal(np.asarray(out), direct(rgb))
    assert models.load(item) is models.load(item)  # kept loaded between passes


def test_extras_runs_a_model_upscaler_as_a1111(tmp_path):
    """Extras' Upscale with a model: the 4x ESRGAN once for "upscale by 2", then Lanczos down to 2x; the infotext
    names the model as A1111 writes it."""
    write(tmp_path / "ESRGAN" / "tiny.pth", esrgan_state_dict())
    models = UpscalerModels(folders(tmp_path), CPU)
    item = models.find("tiny")
    image = picture((40, 24))
    seen = []

    def pass_for(name, scale):
        seen.append((name, scale))
        return models.model_pass(models.find(name), 16, 4)

    out, text = postprocessing.run(image, ExtrasParams(upscaler_1="tiny", upscaling_resize=2), pass_for,
                                   ["None", "Lanczos", "Nearest", "tiny"])
    assert seen == [("tiny", 2)] and out.size == (80, 48)
    assert text == "Postprocess upscale by: 2, Postprocess upscaler: tiny"
    four_x = models.model_pass(item, 16, 4)(image)
    assert out.tobytes() == four_x.resize((80, 48), Image.Resampling.LANCZOS).tobytes()


def test_a_sliver_scaled_to_cover_a_size_is_resized_directly():
    """A1111 would take a 4000x1 image through the upscaler to 8000000x2000 on its way to 2000x2000 (gigabytes); it
    is resized directly instead. An ordinary enlargement still goes through the upscaler."""
    log: list = []
    out = upscaling.resize(Image.new("RGB", (4000, 1)), 2000, 2000, lambda s: counting(2, log))
    assert out.size == (2000, 2000) and log == []
    assert upscaling.resize(picture((40, 24)), 160, 96, lambda s: counting(2, log)).size == (160, 96) and log


def test_tile_size_0_runs_the_whole_image_only_up_to_512():
    assert upscaling.tile_count(512, 300, 0, 8) == 1
    assert upscaling.tile_count(600, 300, 0, 8) == 2 * 1  # 512-pixel tiles
    big = upscaling.tiled(picture((600, 40)), double_nearest, 0, 8)
    assert big.tobytes() == double_nearest(picture((600, 40))).tobytes()


def test_spandrel_imports_without_torchvision_and_leaves_no_stand_in():
    import importlib.util
    import sys

    spandrel = upscalers._spandrel()
    assert spandrel.__version__ == "0.4.2"
    assert importlib.util.find_spec("torchvision") is None
    assert not any(name == "torchvision" or name.startswith("torchvision.") for name in sys.modules)


def test_spandrel_that_cannot_be_imported_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    path = write(tmp_path / "m.pth", compact_state_dict())
    monkeypatch.setitem(sys.modules, "spandrel", None)  # what Python does with a package that failed to import
    with pytest.raises(UpscalerError, match="model upscalers need the spandrel package, which could not be "
                                            "imported \\(ModuleNotFoundError"):
        upscalers.load_descriptor(path, torch.device("cpu"), half=False)
