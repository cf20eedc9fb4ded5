"""The history index through the engine: every saved image (txt2img, img2img, extras, grid) gets its row as it is
written, and the heal indexes files added by hand (A1111's PNGs and JPEGs) and drops rows whose file is gone."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from modules import images, postprocessing
from tests.support.generation import engine, params  # noqa: F401  (the fixture)
from tests.support.engine import make_engine
from tests.support.img2img import params as img2img_params

A1111_TEXT = ("a lighthouse on a cliff, <lora:seaside:0.8>\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M, "
              "Schedule type: Karras, CFG scale: 7, Seed: 4242, Size: 512x768, Model hash: 6ce0161689, "
              "Model: v1-5-pruned-emaonly, Lora hashes: \"seaside: 0123456789ab\", Version: v1.10.1")


def rows_by_path(engine) -> dict[str, dict]:
    rows, total = engine.history.search(limit=500)
    assert total == len(rows)
    return {Path(r["path"]).resolve().as_posix(): r for r in rows}


def heal(engine) -> None:
    engine.history.rescan()
    assert engine.history.wait(120), "the rescan did not finish"
    assert engine.history.status().error is None


def test_saved_images_and_grid_are_indexed_with_their_infotext(engine):
    result = engine.txt2img(params(n_iter=2, prompt="a red circle on a blue background <lora:nothere:0.5>"))
    rows = rows_by_path(engine)
    saved = [Path(p).resolve().as_posix() for p in result.paths]
    assert len(saved) == 2 and all(p in rows for p in saved)
    first = rows[saved[0]]
    assert first["kind"] == "txt2img"
    assert first["prompt"] == "a red circle on a blue background <lora:nothere:0.5>"
    assert first["negative_prompt"] == "green"
    assert (first["seed"], first["width"], first["height"], first["steps"]) == (result.seeds[0], 64, 64, 6)
    assert first["sampler"] == "Euler a" and first["cfg_scale"] == 7.0
    assert first["model"] == "sd1" and first["model_hash"]
    assert first["loras"] == "|nothere|"
    assert first["infotext"] == result.infotexts[0]
    assert first["size"] == os.path.getsize(saved[0])
    assert engine.history.thumbnails([first["id"]])[first["id"]][:2] == b"\xff\xd8"  # a JPEG thumbnail
    grids = [r for r in rows.values() if r["kind"] == "grid"]
    assert len(grids) == 1 and Path(grids[0]["path"]).is_file() and "grid" in Path(grids[0]["path"]).name
    assert len(rows) == 3


def test_img2img_and_extras_are_indexed(engine):
    result = engine.img2img(img2img_params(save_images=True, steps=3))
    extras = engine.extras([Image.open(result.paths[0])],
                           postprocessing.ExtrasParams(upscaling_resize=2, upscaler_1="Lanczos"), save=True)
    rows = rows_by_path(engine)
    i2i = rows[Path(result.paths[0]).resolve().as_posix()]
    assert i2i["kind"] == "img2img" and i2i["denoising_strength"] == 0.75 and i2i["prompt"] == "a blue circle"
    post = rows[Path(extras.paths[0]).resolve().as_posix()]
    assert post["kind"] == "extras"
    assert post["prompt"] == "a blue circle"  # the original's parameters, kept in the file
    assert engine.history.search("kind:extras")[1] == 1
    assert engine.history.search("kind:img2img")[1] == 1


def _a1111_png(path: Path, text: str) -> None:
    info = PngInfo()
    info.add_text("parameters", text)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 32), (10, 120, 200)).save(path, pnginfo=info)


def test_heal_indexes_hand_added_files_drops_deleted_ones_and_skips_corrupt(engine, caplog):
    outputs = engine.paths.outputs
    png = outputs / "txt2img-images" / "2024-03-01" / "00007-4242.png"
    _a1111_png(png, A1111_TEXT)
    jpeg = outputs / "img2img-images" / "00001-99.jpg"
    jpeg.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), "white").save(
        jpeg, exif=images.exif_bytes("a jpeg dog\nSteps: 5, Sampler: Euler, CFG scale: 5, Seed: 99, Size: 40x40, "
                                     "Denoising strength: 0.4"))
    corrupt = outputs / "txt2img-images" / "broken.png"
    corrupt.write_bytes(png.read_bytes()[:60] + b"\0" * 40)
    foreign = outputs / "extras-images" / "notes.png"
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_text("not an image at all")
    plain = outputs / "extras-images" / "screenshot.png"  # an image, but no program of ours or A1111's made it
    Image.new("RGB", (20, 20), "green").save(plain)
    (outputs / "txt2img-images" / ".00009.png.abc.tmp").write_bytes(b"half a file")  # a killed write's temp
    # a saved init image (save_init_img) is an input, even with parameters in it: not looked at
    _a1111_png(outputs / "init-images" / "0123456789abcdef0123456789abcdef.png", A1111_TEXT)
    with caplog.at_level(logging.WARNING, logger="modules.services.history"):
        heal(engine)
    rows = rows_by_path(engine)
    assert set(rows) == {png.resolve().as_posix(), jpeg.resolve().as_posix()}
    a = rows[png.resolve().as_posix()]
    assert (a["kind"], a["seed"], a["width"], a["height"], a["model"], a["loras"]) == \
        ("txt2img", 4242, 512, 768, "v1-5-pruned-emaonly", "|seaside|")
    assert a["time"] == png.stat().st_mtime
    j = rows[jpeg.resolve().as_posix()]
    assert (j["kind"], j["prompt"], j["seed"], j["denoising_strength"]) == ("img2img", "a jpeg dog", 99, 0.4)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "broken.png" in warned and "notes.png" in warned and "screenshot.png" in warned
    assert "no generation parameters" in warned
    status = engine.history.status()
    assert (status.added, status.skipped, status.removed, status.running) == (2, 3, 0, False)

    # unchanged: nothing read again (the skipped files are not warned about twice)
    caplog.clear()
    heal(engine)
    assert engine.history.status().to_read == 0 and "broken.png" not in caplog.text

    png.unlink()
    heal(engine)
    assert set(rows_by_path(engine)) == {jpeg.resolve().as_posix()}
    assert engine.history.status().removed == 1

    beside = jpeg.with_suffix(".txt")  # what save_txt writes
    beside.write_text("a jpeg dog")
    assert engine.history.delete(j["id"]) and not jpeg.exists() and not beside.exists()
    assert rows_by_path(engine) == {} and not engine.history.delete(j["id"])


def test_a_large_images_jpg_copy_is_not_another_picture(engine):
    """export_for_4chan's NAME.jpg beside NAME.png: the scan skips it, drops it when an earlier scan listed it (an
    A1111 folder), and deleting the picture deletes the copy too (or the next scan would list it)."""
    outputs = engine.paths.outputs
    png = outputs / "txt2img-images" / "2024-03-02" / "00011-4242.png"
    _a1111_png(png, A1111_TEXT)
    copy = png.with_suffix(".jpg")
    Image.new("RGB", (40, 60), "white").save(copy, exif=images.exif_bytes(A1111_TEXT))
    heal(engine)
    assert set(rows_by_path(engine)) == {png.resolve().as_posix()}
    engine.history.index.add_many([engine.history._read(str(copy), copy.stat())])  # as a scan before this change did
    assert copy.resolve().as_posix() in rows_by_path(engine)
    heal(engine)
    assert set(rows_by_path(engine)) == {png.resolve().as_posix()}
    row = rows_by_path(engine)[png.resolve().as_posix()]
    assert engine.history.delete(row["id"]) and not png.exists() and not copy.exists()
    heal(engine)
    assert rows_by_path(engine) == {}


def test_rescan_is_stopped_and_joined_by_the_queue(engine):
    folder = engine.paths.outputs / "txt2img-images"
    for i in range(40):
        _a1111_png(folder / f"{i:05d}.png", A1111_TEXT)
    engine.history.rescan()
    engine.queue.stop()  # what the engine's owner does at the end
    assert not any(t.name == "history-scan" for t in threading.enumerate())
    assert not engine.history.status().running


def test_an_index_that_cannot_be_written_never_costs_an_image_and_the_next_start_indexes_it(engine, data_dir,
                                                                                           caplog):
    engine.history.index.close()  # e.g. a disk error on the database, or a crash between file and row
    with caplog.at_level(logging.WARNING, logger="modules.services.history"):
        result = engine.txt2img(params(steps=2))
    saved = Path(result.paths[0])
    assert saved.is_file()
    assert "could not index" in caplog.text and saved.name in caplog.text
    engine.queue.stop()

    again = make_engine(data_dir)  # the next start: its heal finds the file without a row
    try:
        assert rows_by_path(again) == {}
        heal(again)
        row = rows_by_path(again)[saved.resolve().as_posix()]
        assert (row["kind"], row["seed"], row["infotext"]) == ("txt2img", 100, result.infotexts[0])
    finally:
        again.queue.stop()
