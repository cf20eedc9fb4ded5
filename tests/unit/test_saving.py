"""Saving as A1111 does: file formats with their infotext, file and folder name patterns, .txt files,
and the settings that drive them (including over /sdapi/v1/options)."""

from __future__ import annotations

import datetime
import os
import zoneinfo
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from modules import filenames, images
from modules.api.routes import build_router, install_error_handlers
from modules.filenames import FileNamer
from modules.settings import SECTIONS, Settings, section_of
from tests.support.engine import make_engine
from tests.support.generation import engine, params  # noqa: F401  (fixture)

TEXT = "a cat, 猫 on a mat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64"
NOW = datetime.datetime(2026, 3, 4, 5, 6, 7)


def noisy(size=(64, 64), mode="RGB") -> Image.Image:
    return Image.frombytes(mode, size, os.urandom(size[0] * size[1] * len(mode)))


def namer(**kw) -> FileNamer:
    base = dict(prompt="a cat: on/a mat", negative_prompt="dog, ugly", seeds=[5, 6, 7, 8], steps=20, cfg_scale=7.0,
                sampler="DPM++ 2M", scheduler="Karras", model_name="sd1 v1.5", model_hash="0123456789",
                batch_size=2, n_iter=2, job_timestamp="20260304050607", now=lambda: NOW)
    return FileNamer(**{**base, **kw})


def save(folder: Path, image=None, text=TEXT, seed=5, index=0, grid=False, namer_kw=None, **settings) -> Path:
    s = Settings(**{"directories_filename_pattern": "", "save_to_dirs": False, "grid_save_to_dirs": False,
                    **settings})
    return images.save_image(image or Image.new("RGB", (64, 32), (10, 20, 30)), folder, text, s,
                             namer(**(namer_kw or {})), seed, index, grid)


# --- formats ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["png", "jpg", "jpeg", "webp", "avif"])
def test_each_format_carries_the_infotext(tmp_path, fmt):
    path = save(tmp_path, samples_format=fmt, samples_filename_pattern="[seed]")
    assert path.name == f"00000-5.{fmt}"
    with Image.open(path) as im:
        assert im.format == {"jpg": "JPEG", "jpeg": "JPEG"}.get(fmt, fmt.upper())
        assert images.read_info(im)[0] == TEXT
        if fmt != "png":  # A1111's layout: Exif IFD's UserComment, type UNDEFINED, "UNICODE\0" + UTF-16-BE
            assert b"\x92\x86\x00\x07" in im.info["exif"]
            assert b"UNICODE\x00" + TEXT.encode("utf-16-be") in im.info["exif"]


def test_no_metadata_when_pnginfo_is_off_but_txt_still_written(tmp_path):
    path = save(tmp_path, samples_format="jpg", enable_pnginfo=False, save_txt=True)
    with Image.open(path) as im:
        assert images.read_info(im)[0] is None and "exif" not in im.info
    assert path.with_suffix(".txt").read_text(encoding="utf-8") == TEXT + "\n"


def test_jpeg_drops_alpha_webp_lossless_keeps_pixels_quality_matters(tmp_path):
    rgba = noisy(mode="RGBA")
    with Image.open(save(tmp_path, rgba, samples_format="jpg")) as im:
        assert im.mode == "RGB"
    rgb = noisy()
    with Image.open(save(tmp_path, rgb, samples_format="webp", webp_lossless=True)) as im:
        assert im.convert("RGB").tobytes() == rgb.tobytes()
    low = save(tmp_path, rgb, samples_format="jpg", jpeg_quality=10).stat().st_size
    high = save(tmp_path, rgb, samples_format="jpg", jpeg_quality=95).stat().st_size
    assert high > 2 * low
    assert Settings(samples_format=" JPG").samples_format == "jpg"
    with pytest.raises(ValueError):
        Settings(samples_format="bmp")
    with pytest.raises(ValueError):
        Settings(jpeg_quality=0)


def test_large_images_get_a_jpg_copy_as_in_a1111(tmp_path):
    """export_for_4chan (A1111's default on): a file over img_downscale_threshold MB, or a side over
    target_side_length, gets NAME.jpg beside it, downscaled to that side, with the infotext; not for a JPG, nor
    when off. The History index does not take the copy for another picture."""
    from modules import history

    big = noisy((300, 200))  # random pixels: about 180 kB as PNG
    path = save(tmp_path, big, img_downscale_threshold=0.1)
    copy = path.with_suffix(".jpg")
    with Image.open(copy) as im:
        assert im.format == "JPEG" and im.size == (300, 200) and images.read_info(im)[0] == TEXT
    assert history.is_jpeg_copy(copy.name, {path.name, copy.name})
    assert not history.is_jpeg_copy(copy.name, {copy.name})
    wide = save(tmp_path, big, target_side_length=150)  # small file, sides over the limit: downscaled
    with Image.open(wide.with_suffix(".jpg")) as im:
        assert im.size == (150, 100)
    tall = save(tmp_path, noisy((60, 90)), target_side_length=45)
    with Image.open(tall.with_suffix(".jpg")) as im:
        assert im.size == (30, 45)
    for kw in ({"export_for_4chan": False}, {}):  # off; not large
        saved = save(tmp_path, big if kw else noisy((40, 40)), target_side_length=150 if kw else 4000, **kw)
        assert not saved.with_suffix(".jpg").exists()
    # a JPG job's own file is never rewritten as the downscaled copy (A1111 would, with Replace)
    jpg = save(tmp_path, big, samples_format="jpg", target_side_length=150, save_images_add_number=False,
               samples_filename_pattern="[seed]", save_images_replace_action="Replace")
    with Image.open(jpg) as im:
        assert jpg.suffix == ".jpg" and im.size == (300, 200)
    assert sorted(p.suffix for p in tmp_path.iterdir()).count(".jpg") == 4  # three copies and the JPG job
    # a 16-bit picture gets no copy (it would be clipped); an error in the copy never costs the image
    assert images.jpeg_of_large(Image.new("I;16", (300, 200)), 10 ** 9, Settings(), TEXT) is None


def test_too_large_for_the_format_is_saved_as_png(tmp_path):
    assert save(tmp_path, Image.new("RGB", (65536, 1)), samples_format="jpg").suffix == ".png"
    assert save(tmp_path, Image.new("RGB", (1, 16384)), samples_format="webp").suffix == ".png"
    assert save(tmp_path, Image.new("RGB", (16383, 1)), samples_format="webp").suffix == ".webp"


# --- pattern tags -----------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern, expected", [
    ("[seed]", "5"),
    ("[SEED]-[Steps]", "5-20"),  # tags are case-insensitive
    ("[seed_first]-[seed_last]", "5-8"),
    ("[cfg]", "7.0"),
    ("[width]x[height]", "64x32"),
    ("[sampler]", "DPM++ 2M"),
    ("[scheduler]", "Karras"),
    ("[sampler_scheduler]", "DPM++ 2M Karras"),
    ("[model_name]-[model_hash]", "sd1 v1.5-0123456789"),
    ("[date]", "2026-03-04"),
    ("[datetime]", "20260304050607"),
    ("[datetime<%Y/%m/%d %H:%M>]", "2026_03_04 05_06"),  # sanitised, spaces kept
    ("[job_timestamp]", "20260304050607"),
    ("[prompt]", "a_cat__on_a_mat"),
    ("[prompt_spaces]", "a cat_ on_a mat"),
    ("[prompt_words]", "a cat on a mat"),
    ("[prompt_no_styles]", "a cat_ on_a mat"),
    ("[negative_prompt]", "dog,_ugly"),
    ("[styles]", "None"),
    ("[batch_number]", "2"),  # image index 3 of batches of 2: second of its batch
    ("[generation_number]", "4"),
    ("[batch_size]", "2"),
    ("[prompt_hash<4>]", "eb1d"),
    ("[hasprompt<cat|nocat><dog|nodog>]", "catnodog"),
    ("[clip_skip]", "[clip_skip]"),  # not known for this job: left as written
    ("[vae_filename]", "NoneType"),
    ("[none]", ""),
    ("[seed]-[unknown_tag]-[user]", "5-[unknown_tag]-[user]"),
    ("[seed]-[nope<x>]", "5-[nope<x>]"),
    ("no tags at all", "no tags at all"),
    ("[[seed]]", "[5]"),
    ("[seed", "[seed"),
])
def test_pattern_tags(pattern, expected):
    assert namer().expand(pattern, Image.new("RGB", (64, 32)), seed=5, index=3) == expected


def test_tags_that_drop_themselves_and_the_text_before():
    one = namer(batch_size=1, n_iter=1, seeds=[5])
    assert one.expand("[seed]-[batch_number]-[generation_number]-x", seed=5) == "5-x"
    assert one.expand("[seed_first]_[seed_last]", seed=5) == "5"
    assert one.expand("[seed]-[denoising]") == ""
    assert namer(denoising_strength=0.5).expand("[seed]-[denoising]", seed=5) == "5-0.5"
    assert namer(batch_size=1, n_iter=3).expand("[generation_number]", index=2) == "3"


def test_sanitising_and_long_prompts():
    assert filenames.sanitize(' #a<b>c:d"e/f\\g|h?i*j\nk\rl\tm. . ') == "__a_b_c_d_e_f_g_h_i_j_k_l_m._._"
    assert filenames.sanitize("  lead and trail .. ", replace_spaces=False) == "lead and trail"
    long = namer(prompt="word " * 100).expand("[prompt]")
    assert len(long) == 128 and long.startswith("word_word_")
    assert namer(prompt="").expand("[prompt_words]") == "empty"
    assert namer(prompt="one, two; three!!! four five six seven eight nine").expand("[prompt_words]") == \
        "one two three four five six seven eight"
    assert namer(prompt="<lora:x:1> a", max_prompt_words=2).expand("[prompt_words]") == "lora x"
    assert namer(styles=["Photo", "None", "Cinematic: dark"]).expand("[styles]") == "Photo, Cinematic_ dark"
    assert namer(prompt="a cat, photo style", prompt_no_styles="a cat").expand("[prompt_no_styles]") == "a cat"
    assert namer(vae_filename="sub/my.vae.safetensors").expand("[vae_filename]") == "my"


def test_datetime_with_a_time_zone():
    try:
        zoneinfo.ZoneInfo("Asia/Tokyo")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone data here (pip install tzdata)")
    utc = namer(now=lambda: datetime.datetime(2026, 3, 4, 23, 0, tzinfo=datetime.timezone.utc))
    assert utc.expand("[datetime<%Y-%m-%d %H><Asia/Tokyo>]") == "2026-03-05 08"
    assert namer().expand("[datetime<%H><No/Such_Zone>]") == "05"  # unknown zone: local time, as A1111


# --- file names on disk ---------------------------------------------------------------------------

def test_default_names_and_numbering_continue_across_existing_files(tmp_path):
    for name in ("00041-7.png", "00007.txt", "00099x.png", "abc-00500.png", "grid-0100.png", ".00300-1.png.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert save(tmp_path, seed=9).name == "00042-9-a cat_ on_a mat.png"  # flat folder: [seed]-[prompt_spaces]
    assert save(tmp_path, seed=9, save_to_dirs=True).parent.name == "a cat on a mat"  # empty dir pattern
    # a directory pattern that comes out empty saves in the folder itself
    assert save(tmp_path, seed=9, save_to_dirs=True, directories_filename_pattern="[none]") == tmp_path / "00043-9.png"
    assert save(tmp_path, seed=3, samples_filename_pattern="[none]").name == "00044.png"
    assert save(tmp_path, seed=3, samples_filename_pattern="[seed]-[batch_number]",
                namer_kw={"batch_size": 1}).name == "00045-3.png"
    assert (tmp_path / "00041-7.png").read_bytes() == b""  # nothing overwritten


def test_without_numbers_replace_or_add_a_suffix(tmp_path):
    kw = dict(save_images_add_number=False, samples_filename_pattern="[model_name]-[seed]")
    first = save(tmp_path, **kw)
    assert first.name == "sd1 v1.5-5.png"
    assert save(tmp_path, text="second", **kw) == first  # A1111's default action: Replace
    assert images.read_info(Image.open(first))[0] == "second"
    kw["save_images_replace_action"] = "Add number suffix"
    assert [save(tmp_path, **kw).name for _ in range(2)] == ["sd1 v1.5-5-1.png", "sd1 v1.5-5-2.png"]
    # an empty decoration is numbered anyway
    assert save(tmp_path, save_images_add_number=False, samples_filename_pattern="[none]").name == "00000.png"


def test_literal_slashes_in_a_file_pattern_stay_in_the_folder(tmp_path):
    assert save(tmp_path, samples_filename_pattern="a/b\\[seed]").name == "00000-a_b_5.png"


def test_very_long_names_are_clipped_to_the_file_system(tmp_path):
    limit = os.statvfs(tmp_path).f_namemax
    pattern = "[prompt]-[prompt]-[prompt]"
    path = save(tmp_path, samples_filename_pattern=pattern, save_txt=True, namer_kw={"prompt": "猫 " * 200})
    assert len(path.name.encode()) <= limit and path.name.startswith("00000-猫_猫") and path.suffix == ".png"
    assert path.with_suffix(".txt").read_text(encoding="utf-8") == TEXT + "\n"
    again = save(tmp_path, samples_filename_pattern=pattern, namer_kw={"prompt": "猫 " * 200})
    assert again.name.startswith("00001-")


def test_directory_patterns(tmp_path):
    dated = save(tmp_path, save_to_dirs=True, directories_filename_pattern="[date]")
    assert dated.parent == tmp_path / "2026-03-04" and dated.name == "00000-5.png"
    nested = save(tmp_path, save_to_dirs=True, directories_filename_pattern="[model_name]/[prompt_words] ")
    assert nested.parent == tmp_path / "sd1 v1.5" / "a cat on a mat"
    escape = save(tmp_path, save_to_dirs=True, directories_filename_pattern="../../[seed]/./x")
    assert escape.parent == tmp_path / "5" / "x"
    assert save(tmp_path, save_to_dirs=False, directories_filename_pattern="[date]").parent == tmp_path
    # a drive letter (Windows: joining "C:Users" would leave the output folder for drive C) is only a name
    drive = save(tmp_path, save_to_dirs=True, directories_filename_pattern="C:/Users/Public")
    assert drive.parent == tmp_path / "C_" / "Users" / "Public"
    named = save(tmp_path, save_to_dirs=False, samples_filename_pattern="C:evil", save_images_add_number=False)
    assert named == tmp_path / "C_evil.png"
    from pathlib import PureWindowsPath
    assert str(PureWindowsPath("D:/out") / images._subfolder("C:/Users")) == "D:\\out\\C_\\Users"


def test_grids_have_short_names_their_own_format_and_folder_setting(tmp_path):
    kw = dict(grid=True, grid_format="webp", samples_format="jpg", save_txt=True)
    grid = save(tmp_path, **kw)
    assert grid.name == "grid-0000.webp" and images.read_info(Image.open(grid))[0] == TEXT
    assert grid.with_suffix(".txt").exists()
    assert save(tmp_path, grid_extended_filename=True, samples_filename_pattern="[seed]", **kw).name == \
        "grid-0001-5.webp"
    assert save(tmp_path, grid_save_to_dirs=True, save_to_dirs=False, directories_filename_pattern="[date]",
                **kw).parent.name == "2026-03-04"


def test_save_txt_beside_each_image(tmp_path):
    path = save(tmp_path, samples_format="webp", save_txt=True)
    assert path.with_suffix(".txt").read_text(encoding="utf-8") == TEXT + "\n"
    assert not save(tmp_path).with_suffix(".txt").exists()  # off by default
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000-5-a cat_ on_a mat.txt",
                                                          "00000-5-a cat_ on_a mat.webp",
                                                          "00001-5-a cat_ on_a mat.png"]


# --- settings -----------------------------------------------------------------------------------------

def test_every_setting_has_one_section_and_a_description():
    listed = [name for names in SECTIONS.values() for name in names]
    assert sorted(listed) == sorted(Settings.model_fields) and len(listed) == len(set(listed))
    for name, info in Settings.model_fields.items():
        assert info.description, name
    assert section_of("samples_format") == "Saving images" and section_of("no_such_key") is None
    s = Settings()
    assert (s.samples_format, s.grid_format, s.jpeg_quality, s.webp_lossless, s.samples_filename_pattern,
            s.directories_filename_pattern, s.save_images_add_number, s.save_incomplete_images, s.save_txt,
            s.show_progress_every_n_steps, s.live_preview_refresh_period) == \
        ("png", "png", 80, False, "", "[date]", True, False, False, 10, 1000)


def test_options_api_reads_and_writes_the_new_keys(data_dir):
    engine = make_engine(data_dir, checkpoint=None)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_router(engine, {}))
    try:
        client = TestClient(app)
        opts = client.get("/sdapi/v1/options").json()
        assert opts["samples_format"] == "png" and opts["directories_filename_pattern"] == "[date]"
        changes = {"samples_format": "webp", "jpeg_quality": 90, "samples_filename_pattern": "[seed]-[steps]",
                   "save_txt": True, "show_progress_every_n_steps": -1, "live_preview_refresh_period": 500}
        assert client.post("/sdapi/v1/options", json=changes).status_code == 200
        assert {k: client.get("/sdapi/v1/options").json()[k] for k in changes} == changes
        for bad in ({"samples_format": "bmp"}, {"jpeg_quality": 101}, {"show_progress_every_n_steps": -2}):
            assert client.post("/sdapi/v1/options", json=bad).status_code in (400, 422), bad
        assert client.get("/sdapi/v1/options").json()["jpeg_quality"] == 90  # nothing changed
    finally:
        engine.queue.stop()


# --- through the engine ---------------------------------------------------------------------------

def test_engine_saves_jpg_with_the_pattern_and_txt(engine, data_dir):  # noqa: F811
    engine.options.update({"samples_format": "jpg", "grid_format": "webp", "save_txt": True,
                            "samples_filename_pattern": "[seed]-[model_name]-[sampler]-[batch_number]",
                            "directories_filename_pattern": "[date]/[prompt_words]"})
    before = datetime.date.today().isoformat()
    result = engine.txt2img(params(prompt="a cat: on/a mat", styles=[], batch_size=2, steps=2, seed=7))
    day = Path(result.paths[0]).parent.parent.name  # (the day the job saved on: it may have run past midnight)
    assert day in (before, datetime.date.today().isoformat())
    folder = data_dir / "outputs" / "txt2img-images" / day / "a cat on a mat"
    assert [Path(p) for p in result.paths] == [folder / "00000-7-sd1-Euler a-1.jpg",
                                               folder / "00001-8-sd1-Euler a-2.jpg"]
    for path, text in zip(result.paths, result.infotexts):
        with Image.open(path) as im:
            assert im.format == "JPEG" and images.read_info(im)[0] == text
        assert Path(path).with_suffix(".txt").read_text(encoding="utf-8") == text + "\n"
    grids = list((data_dir / "outputs" / "txt2img-grids").rglob("grid-*"))
    assert sorted(p.name for p in grids) == ["grid-0000.txt", "grid-0000.webp"]
    # a request can override the pattern, as A1111's override_settings can
    again = engine.txt2img(params(prompt="a dog", steps=2, seed=3,
                                  override_settings={"samples_filename_pattern": "[steps]-[cfg]"}))
    assert Path(again.paths[0]).name == "00000-2-7.0.jpg"
