"""Extras (post-processing): A1111's Upscale operation with the plain upscalers, its infotext and PNG
chunks, the refusals (model upscalers, face restoration), and Engine.extras going through the job
queue and saving as A1111 names extras files."""

from __future__ import annotations

import io
import shutil
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from modules import images, postprocessing
from modules.engine import BadRequest
from modules.generation.params import GenerationParams
from modules.postprocessing import ExtrasError, ExtrasParams
from tests.support.engine import make_engine

LANCZOS, NEAREST = Image.Resampling.LANCZOS, Image.Resampling.NEAREST


def picture(size=(64, 32), mode="RGB") -> Image.Image:
    image = Image.new(mode, size, (200, 40, 30) if mode != "L" else 90)
    draw = ImageDraw.Draw(image)
    draw.ellipse((size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4),
                 fill=(20, 60, 220) if mode != "L" else 200)
    draw.line((0, 0, size[0], size[1]), fill=(250, 250, 0) if mode != "L" else 255, width=3)
    return image


def png_with(image: Image.Image, meta: PngInfo) -> Image.Image:
    """The image as read back from a PNG file with these text chunks."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    return Image.open(io.BytesIO(buf.getvalue()))


def run(image, **kw):
    return postprocessing.run(image, ExtrasParams(**kw))


def test_defaults_are_a1111s_extras_api_defaults():
    p = ExtrasParams()
    assert (p.resize_mode, p.upscaling_resize, p.upscaling_resize_w, p.upscaling_resize_h) == (0, 2, 512, 512)
    assert (p.upscaling_crop, p.upscaler_1, p.upscaler_2, p.extras_upscaler_2_visibility) == (True, "None", "None", 0)
    assert (p.upscale_first, p.gfpgan_visibility, p.codeformer_visibility, p.codeformer_weight) == (False, 0, 0, 0)
    assert p.upscaling_max_side_length == 0


def test_upscaler_none_leaves_the_image_as_it_is():
    """A1111's Extras: upscaler 1 "None" skips the Upscale operation whatever the factor."""
    image = picture()
    out, text = run(image, upscaler_1="None", upscaling_resize=4, upscaler_2="Lanczos", extras_upscaler_2_visibility=1)
    assert out.size == image.size and out.tobytes() == image.tobytes() and text == ""
    assert out is not image and "extras" not in image.info


def test_scale_by_with_lanczos_and_nearest():
    image = picture((30, 21))
    out, text = run(image, upscaler_1="Lanczos", upscaling_resize=2)
    # 60x42 rounded down to a multiple of 8 is 56x40: resampled to 60x42, then Lanczos to 56x40 (A1111)
    assert out.size == (56, 40)
    expected = image.resize((60, 42), resample=LANCZOS).resize((56, 40), resample=LANCZOS)
    assert out.tobytes() == expected.tobytes()
    assert text == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    # Nearest doubles every pixel into a 2x2 block
    small = picture((16, 8))
    out, text = run(small, upscaler_1="Nearest", upscaling_resize=2)
    assert np.array_equal(np.asarray(out), np.asarray(small).repeat(2, axis=0).repeat(2, axis=1))
    assert text == "Postprocess upscale by: 2, Postprocess upscaler: Nearest"
    out, text = run(small, upscaler_1="Lanczos", upscaling_resize=2.5)
    assert out.size == (40, 16) and text.startswith("Postprocess upscale by: 2.5,")


def test_scale_to_crops_to_fit_or_keeps_the_aspect():
    image = picture((64, 32))
    out, text = run(image, resize_mode=1, upscaling_resize_w=48, upscaling_resize_h=48, upscaler_1="Lanczos")
    scaled = image.resize((96, 48), resample=LANCZOS)  # scale 1.5 covers 48x48
    assert out.size == (48, 48) and out.tobytes() == scaled.crop((24, 0, 72, 48)).tobytes()
    assert text == "Postprocess upscale to: 48x48, Postprocess crop to: 48x48, Postprocess upscaler: Lanczos"
    out, text = run(image, resize_mode=1, upscaling_resize_w=48, upscaling_resize_h=48, upscaling_crop=False,
                    upscaler_1="Lanczos")
    assert out.tobytes() == scaled.tobytes() and text == "Postprocess upscale to: 48x48, Postprocess upscaler: Lanczos"


def test_max_side_length_limits_scale_by():
    out, text = run(picture((64, 32)), upscaler_1="Lanczos", upscaling_resize=4, upscaling_max_side_length=128)
    assert out.size == (128, 64)
    assert text == "Postprocess upscale by: 4, Max side length: 128, Postprocess upscaler: Lanczos"
    out, _ = run(picture((64, 32)), upscaler_1="Lanczos", upscaling_resize=2, upscaling_max_side_length=512)
    assert out.size == (128, 64)  # under the limit: plain scale by


def test_second_upscaler_is_blended_by_its_visibility():
    image = picture((16, 8))
    lanczos, _ = run(image, upscaler_1="Lanczos")
    nearest, _ = run(image, upscaler_1="Nearest")
    out, text = run(image, upscaler_1="Lanczos", upscaler_2="Nearest", extras_upscaler_2_visibility=0.25)
    assert out.tobytes() == Image.blend(lanczos, nearest, 0.25).tobytes()
    assert text == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos, Postprocess upscaler 2: Nearest"
    out, text = run(image, upscaler_1="Lanczos", upscaler_2="Nearest", extras_upscaler_2_visibility=0)
    assert out.tobytes() == lanczos.tobytes() and "upscaler 2" not in text


def test_modes_and_text_chunks():
    meta = PngInfo()
    meta.add_text("parameters", "a cat\nSteps: 5, Sampler: Euler a, Seed: 8, Size: 64x32")
    meta.add_text("Software", "paint")
    source = png_with(picture(), meta)
    out, text = run(source, upscaler_1="Lanczos")
    assert out.info == {"parameters": "a cat\nSteps: 5, Sampler: Euler a, Seed: 8, Size: 64x32", "Software": "paint",
                        "postprocessing": text, "extras": text}
    rgba, _ = run(picture(mode="RGBA"), upscaler_1="Lanczos")
    grey, _ = run(picture(mode="L"), upscaler_1="Lanczos")
    assert (rgba.mode, grey.mode) == ("RGBA", "RGB")  # A1111 keeps RGB(A) and converts the rest to RGB


@pytest.mark.parametrize("kw,needle", [
    ({"upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1: there is no upscaler 'R-ESRGAN 4x+'; available"),
    ({"upscaler_2": "ESRGAN_4x"}, "available: None, Lanczos, Nearest"),
    ({"gfpgan_visibility": 0.5}, "gfpgan_visibility: face restoration (GFPGAN, CodeFormer) is not available"),
    ({"codeformer_visibility": 1}, "codeformer_visibility: face restoration"),
])
def test_what_is_not_available_is_refused_with_the_reason(kw, needle):
    with pytest.raises(ExtrasError) as e:
        run(picture(), **kw)
    assert needle in str(e.value)


def test_sizes_out_of_range_are_refused():
    with pytest.raises(ExtrasError, match="between 8 and 16384"):
        run(picture((4000, 8)), upscaler_1="Lanczos", upscaling_resize=5)
    with pytest.raises(ExtrasError, match="between 8 and 16384"):
        run(picture((4, 4)), upscaler_1="Lanczos", upscaling_resize=1.5)
    with pytest.raises(ValueError):
        ExtrasParams(upscaling_resize=0)


@pytest.mark.parametrize("size", [(64, 32), (33, 47), (8, 8), (500, 120)])
@pytest.mark.parametrize("kw", [
    dict(upscaler_1="None", upscaling_resize=4), dict(upscaler_1="Lanczos"), dict(upscaler_1="Nearest",
                                                                                  upscaling_resize=1.37),
    dict(upscaler_1="Lanczos", upscaling_resize=0.5), dict(upscaler_1="Lanczos", upscaling_resize=3,
                                                           upscaling_max_side_length=100),
    dict(upscaler_1="Lanczos", resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=30),
    dict(upscaler_1="Lanczos", resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=30, upscaling_crop=False),
    dict(upscaler_1="Lanczos", upscaler_2="Nearest", extras_upscaler_2_visibility=0.5, upscaling_resize=2.5),
    dict(upscaler_1="Lanczos", upscaling_resize=0.1)])
def test_output_size_is_the_size_run_makes(size, kw):
    """What the batch limit counts, from the numbers alone, is what `run` makes (or the same refusal)."""
    params = ExtrasParams(**kw)
    try:
        made = run(picture(size), **kw)[0].size
    except ExtrasError as e:
        with pytest.raises(ExtrasError, match=str(e)):
            postprocessing.output_size(*size, params)
    else:
        assert postprocessing.output_size(*size, params) == made


# --- Engine.extras: the job queue and saving -------------------------------------------------------

@pytest.fixture()
def engine(tmp_path, tiny_dir):
    shutil.copytree(tiny_dir, tmp_path / "models" / "Stable-diffusion")
    e = make_engine(tmp_path)
    yield e
    e.queue.stop()


def test_engine_extras_saves_numbered_files_in_the_extras_folder(engine, tmp_path):
    meta = PngInfo()
    meta.add_text("parameters", "a dog\nSteps: 3, Seed: 1")
    source = png_with(picture(), meta)
    params = ExtrasParams(upscaler_1="Lanczos")
    result = engine.extras([source, picture((32, 32))], params, save=True)
    assert [im.size for im in result.images] == [(128, 64), (64, 64)]
    assert result.infotexts == ["Postprocess upscale by: 2, Postprocess upscaler: Lanczos"] * 2
    folder = tmp_path / "outputs" / "extras-images"
    assert [p.name for p in sorted(folder.iterdir())] == ["00000.png", "00001.png"]  # no date folder
    assert result.paths == [str(folder / "00000.png"), str(folder / "00001.png")]
    saved = Image.open(folder / "00000.png")
    saved.load()
    assert saved.info["parameters"] == "a dog\nSteps: 3, Seed: 1"
    assert saved.info["extras"] == saved.info["postprocessing"] == result.infotexts[0]
    assert saved.tobytes() == result.images[0].tobytes()
    engine.extras([picture()], params, save=True)
    assert (folder / "00002.png").is_file()
    unsaved = engine.extras([picture()], params, save=False)
    assert unsaved.paths == [None] and len(list(folder.iterdir())) == 3
    engine.options.update({"samples_format": "jpg"})
    jpeg = engine.extras([source], params, save=True)
    assert jpeg.paths[0].endswith("00003.jpg")
    assert images.read_info(Image.open(jpeg.paths[0]))[0] == result.infotexts[0]  # A1111: EXIF holds the extras text


def test_engine_extras_refuses_before_queueing(engine):
    for params in (ExtrasParams(upscaler_1="SwinIR 4x"), ExtrasParams(gfpgan_visibility=1)):
        with pytest.raises(BadRequest):
            engine.submit_extras([picture()], params)
    with pytest.raises(BadRequest, match="at least one image"):
        engine.submit_extras([], ExtrasParams())
    with pytest.raises(BadRequest, match="The upscaled image would be 0x0 pixels; each side must be between 8 and "
                                         "16384"):  # worked out from the size, before the job
        engine.submit_extras([picture((4, 4))], ExtrasParams(upscaler_1="Lanczos", upscaling_resize=1.5))
    with pytest.raises(BadRequest, match="^image 2 of 2: The upscaled image would be 0x0"):
        engine.submit_extras([picture(), picture((4, 4))], ExtrasParams(upscaler_1="Lanczos", upscaling_resize=1.5))
    assert engine.queue.queued == 0 and engine.queue.current is None


def test_an_extras_batch_is_limited_in_images_and_in_the_pixels_it_makes(tmp_path, tiny_dir, monkeypatch):
    """The security review's case: extra-batch-images kept any number of results (each up to 16384x16384) until
    the batch ended. --max-extras-images and --max-extras-megapixels refuse, from the images' sizes, before
    anything is decoded or queued."""
    from modules import limits
    from modules.engine import OverLimit
    assert (limits.Limits().max_extras_images, limits.Limits().max_extras_megapixels) == (100, 1100.0)
    shutil.copytree(tiny_dir, tmp_path / "models" / "Stable-diffusion")
    engine = make_engine(tmp_path, limits=limits.Limits(max_extras_images=3, max_extras_megapixels=2))
    monkeypatch.setattr(images, "load", lambda *a, **k: pytest.fail("decoded"))
    try:
        with pytest.raises(OverLimit, match=r"^Extras: 4 images, over this server's limit of 3 a batch "
                                            r"\(--max-extras-images\)$"):
            engine.submit_extras([picture()] * 4, ExtrasParams(upscaler_1="Lanczos"))
        to_1024 = ExtrasParams(upscaler_1="Lanczos", resize_mode=1, upscaling_resize_w=1024, upscaling_resize_h=1024)
        with pytest.raises(OverLimit, match=r"^Extras: the results would be 3.15 megapixels \(3 images, the largest "
                                            r"1024x1024\), over this server's limit of 2 megapixels a batch "
                                            r"\(--max-extras-megapixels\)$"):
            engine.submit_extras([picture()] * 3, to_1024)
        assert engine.queue.queued == 0 and engine.queue.current is None
        monkeypatch.undo()
        result = engine.extras([picture()] * 3, ExtrasParams(upscaler_1="Lanczos", upscaling_resize=16), save=False)
        assert [im.size for im in result.images] == [(1024, 512)] * 3  # 1.57 megapixels in all: within the limit
    finally:
        engine.queue.stop()


def folder_of_pictures(folder, sizes) -> list:
    """PNG files 0.png, 1.png, ... in `folder` of these sizes, each with its number in a text chunk."""
    folder.mkdir()
    files = []
    for n, size in enumerate(sizes):
        meta = PngInfo()
        meta.add_text("parameters", f"picture {n}")
        picture(size).save(folder / f"{n}.png", pnginfo=meta)
        files.append(folder / f"{n}.png")
    return files


def test_a_folder_batch_reads_and_saves_one_image_at_a_time_and_skips_what_it_cannot_do(tmp_path, tiny_dir,
                                                                                          monkeypatch):
    """Batch from Directory as A1111 runs it: a file is read, done and saved before the next is read, so no
    length of folder adds up in memory, and a file that cannot be done is skipped (named in the result; A1111
    skips it silently). What the page shows is held up to the Extras limits; all are saved."""
    from modules import limits
    shutil.copytree(tiny_dir, tmp_path / "models" / "Stable-diffusion")
    engine = make_engine(tmp_path, limits=limits.Limits(max_extras_images=2, max_input_megapixels=0.01))
    files = folder_of_pictures(tmp_path / "in", [(64, 32), (32, 32), (40, 24), (200, 100), (16, 48)])
    (tmp_path / "in" / "3.png").rename(tmp_path / "in" / "big.png")  # 20000 pixels: over the 10000 allowed
    files[3] = tmp_path / "in" / "big.png"
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    files.insert(1, tmp_path / "in" / "broken.png")
    alive, most_alive, real_read = set(), [0], images.read_image

    def read_image(*args, **kwargs):  # the real read, counting the inputs still in memory when one is read
        most_alive[0] = max(most_alive[0], len(alive))
        image = real_read(*args, **kwargs)
        alive.add(id(image))
        weakref.finalize(image, alive.discard, id(image))
        return image

    monkeypatch.setattr(images, "read_image", read_image)
    params = ExtrasParams(upscaler_1="Lanczos")  # scale by 2
    try:
        shown = engine.submit_extras_folder(files, params, str(tmp_path / "out"), show=True).wait(60)
        assert most_alive[0] == 0  # each input was gone before the next was read
        assert [Image.open(p).info["parameters"] for p in shown.paths] == ["picture 0", "picture 1", "picture 2",
                                                                            "picture 4"]
        assert [Image.open(p).size for p in shown.paths] == [(128, 64), (64, 64), (80, 48), (32, 96)]
        assert all(Path(p).parent == tmp_path / "out" for p in shown.paths)
        # named after their inputs, as A1111's setting use_original_name_batch (on) names them
        assert [Path(p).name for p in shown.paths] == ["0-0000.png", "1-0000.png", "2-0000.png", "4-0000.png"]
        assert [im.size for im in shown.images] == [(128, 64), (64, 64)]  # the first 2 (--max-extras-images)
        assert shown.infotexts == ["Postprocess upscale by: 2, Postprocess upscaler: Lanczos"] * 4
        assert len(shown.skipped) == 2 and not shown.interrupted
        assert shown.skipped[0].startswith("broken.png: not an image that can be read")
        assert shown.skipped[1].startswith("big.png: the image has 0.02 megapixels (200x100)")

        engine.options.update({"use_original_name_batch": False})
        unshown = engine.submit_extras_folder(files, params, None, show=False).wait(60)
        assert unshown.images == [] and len(unshown.paths) == 4 and len(unshown.skipped) == 2
        assert [Path(p).name for p in unshown.paths] == ["00000.png", "00001.png", "00002.png", "00003.png"]
        assert all(Path(p).parent == tmp_path / "outputs" / "extras-images" for p in unshown.paths)
        with pytest.raises(BadRequest, match="there is no upscaler 'SwinIR 4x'"):  # refused before it is queued
            engine.submit_extras_folder(files, ExtrasParams(upscaler_1="SwinIR 4x"))
        assert engine.queue.queued == 0 and engine.queue.current is None
    finally:
        engine.queue.stop()


def test_a_folder_batch_shows_results_within_the_megapixels_and_stops_at_an_interrupt(tmp_path, tiny_dir):
    from modules import limits
    shutil.copytree(tiny_dir, tmp_path / "models" / "Stable-diffusion")
    engine = make_engine(tmp_path, limits=limits.Limits(max_extras_megapixels=1))
    files = folder_of_pictures(tmp_path / "in", [(300, 300), (300, 300), (300, 300), (16, 16)])
    try:
        # 600x600 results: the third brings the total to 1.08 megapixels, past the limit; from then on none is
        # kept (the last, 32x32, would fit), so the page shows the first ones
        result = engine.submit_extras_folder(files, ExtrasParams(upscaler_1="Nearest"), show=True).wait(60)
        assert [im.size for im in result.images] == [(600, 600), (600, 600)]
        result = engine.submit_extras_folder(files, ExtrasParams(upscaler_1="Nearest", upscaling_resize=3),
                                             show=True).wait(60)
        assert [im.size for im in result.images] == [(896, 896)]  # 0.8 megapixels; two would be 1.61
        assert len(result.paths) == 4

        gate = threading.Event()
        ahead = engine.queue.submit("test", lambda _job: gate.wait(30))  # holds the queue
        job = engine.submit_extras_folder(files, ExtrasParams(upscaler_1="Nearest"))
        job.request("interrupt")  # before it runs: nothing is done
        gate.set()
        ahead.wait(30)
        result = job.wait(60)
        assert result.interrupted and result.paths == [] and result.images == []
    finally:
        engine.queue.stop()


def test_engine_extras_waits_behind_a_running_generation(engine):
    finished = []
    generation = engine.submit_txt2img(GenerationParams(prompt="x", width=64, height=64, steps=300, seed=1,
                                                        save_images=False))
    generation.add_done_callback(lambda job: finished.append("txt2img"))
    started = threading.Event()
    while generation.state.sampling_step == 0:
        started.wait(0.02)
    extras = engine.submit_extras([picture()], ExtrasParams(upscaler_1="Lanczos"))
    extras.add_done_callback(lambda job: finished.append("extras"))
    assert engine.queue.ahead_of(extras) == 1
    started.wait(0.3)
    assert not extras.done.is_set()
    engine.queue.interrupt()
    assert extras.wait(120).images[0].size == (128, 64)
    assert finished == ["txt2img", "extras"]


@pytest.mark.parametrize("name, stem", [("photo.png", "photo"), ("a.b.JPG", "a.b"), ("../../etc/passwd.png", "passwd"),
                                        ("C:\\Users\\me\\my cat.webp", "my cat"), ("C:cat.png", "C_cat"),
                                        ("..", ""), ("noext", "noext"), ("a<b>|c.png", "a_b__c")])
def test_a_batch_inputs_name_becomes_a_safe_start_of_its_results(name, stem):
    """An uploaded file's name is the client's: only its last part, made safe, names the result."""
    from modules.services.output import original_stem
    assert original_stem(name) == stem
