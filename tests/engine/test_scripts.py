"""Scripts through the engine with the tiny models: an X/Y/Z plot is one job (one progress bar, cell k of N),
its costly axis looped outermost (each checkpoint loaded once), its grid and legend, its infotext pasted back
into the same plot; an interrupt keeps what was made; Prompt matrix and Prompts from file."""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from modules.generation.params import Img2ImgParams
from modules.services.errors import BadRequest, UnknownScript
from tests.support.generation import engine, params  # noqa: F401  (fixture)


def axis(engine, label, kind="txt2img"):  # noqa: F811
    return [a.label for a in engine.scripts.xyz_axes(kind)].index(label)


def test_xyz_plot_is_one_job_with_a_grid_and_a_legend(engine, data_dir):  # noqa: F811
    seen = []
    job = engine.submit_script("txt2img", "X/Y/Z plot", params(steps=2, seed=7),
                               [axis(engine, "Steps"), "1-2", [], axis(engine, "CFG Scale"), "3, 7", [],
                                0, "", [], True, True])
    job.add_done_callback(lambda j: seen.append((j.state.job, j.state.job_no, j.state.job_count, j.state.progress())))
    result = job.wait()
    assert seen == [("4 out of 4", 3, 4, 1.0)]  # the fourth of four cells was the last: one bar over the cells
    assert len(result.images) == 4 and result.grid is not None
    w, h = result.grid.size
    assert w > 128 and h > 128  # two by two cells of 64 and the legend's bands
    steps_cfg = [(t.split("Steps: ")[1].split(",")[0], t.split("CFG scale: ")[1].split(",")[0])
                 for t in result.infotexts]
    assert steps_cfg == [("1", "3"), ("2", "3"), ("1", "7"), ("2", "7")]  # x changes fastest
    assert result.seeds == [7, 7, 7, 7]
    text = result.grid.info["parameters"]
    assert "Script: X/Y/Z plot, X Type: Steps, X Values: 1-2, Y Type: CFG Scale, Y Values: \"3, 7\"" in text
    info = result.info
    assert info["infotexts"] == result.infotexts and info["all_seeds"] == [7, 7, 7, 7]
    assert info["all_prompts"] == ["a red circle on a blue background"] * 4
    # the cell at x=1 (2 steps), y=0 in the grid is the lone image made with those values
    cell = result.grid.crop((w - 64, h - 128, w, h - 64))
    assert cell.tobytes() == result.images[1].convert("RGB").tobytes()
    grids = sorted(p.name for p in (data_dir / "outputs" / "txt2img-grids").rglob("*.png"))
    assert grids == ["xyz_grid-0000.png"]  # the plot's grid, saved once, with its infotext
    saved = Image.open(next((data_dir / "outputs" / "txt2img-grids").rglob("xyz_grid-0000.png")))
    assert saved.info["parameters"] == text
    assert len(list((data_dir / "outputs" / "txt2img-images").rglob("*.png"))) == 4  # each cell's image


def test_without_legend_the_grid_is_the_cells(engine):  # noqa: F811
    result = engine.submit_script("txt2img", "x/y/z plot", params(steps=1),
                                  [axis(engine, "Seed"), "1, 2, 3", [], 0, "", [], 0, "", [], False]).wait()
    assert result.grid.size == (192, 64) and result.images == []  # no lone images by default, as A1111
    assert 'Fixed X Values: "1, 2, 3"' in result.grid.info["parameters"]


def test_costly_axis_loads_each_checkpoint_once(engine, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="modules.models.manager")
    result = engine.submit_script(
        "txt2img", "X/Y/Z plot", params(steps=1),
        [axis(engine, "Steps"), "1-3", [], axis(engine, "Checkpoint name"), "", ["sd1.safetensors", "sd1-ckpt.ckpt"],
         0, "", [], True, True]).wait()
    loads = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Loading weights from")]
    assert len(loads) == 2 and loads[0].endswith("sd1.safetensors") and loads[1].endswith("sd1-ckpt.ckpt")
    models = [t.split("Model: ")[1].split(",")[0] for t in result.infotexts]
    assert models == ["sd1"] * 3 + ["sd1-ckpt"] * 3
    caplog.clear()
    engine.submit_script(  # the same with the checkpoint on X: still looped outermost
        "txt2img", "X/Y/Z plot", params(steps=1),
        [axis(engine, "Checkpoint name"), "", ["sd1.safetensors", "sd1-ckpt.ckpt"], axis(engine, "Steps"), "1-3", []]
    ).wait()
    loads = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Loading weights from")]
    assert len(loads) == 2


def test_bad_axis_values_are_refused_before_anything_is_queued(engine):  # noqa: F811
    with pytest.raises(BadRequest, match="X axis \\(Checkpoint name\\).*unknown checkpoint 'nope'"):
        engine.submit_script("txt2img", "X/Y/Z plot", params(), [axis(engine, "Checkpoint name"), "", ["nope"]])
    with pytest.raises(BadRequest, match="X axis \\(Sampler\\) value 'Nope'.*Nope"):
        engine.submit_script("txt2img", "X/Y/Z plot", params(), [axis(engine, "Sampler"), "", ["Nope"]])
    with pytest.raises(BadRequest, match="Y axis \\(Face restore\\).*not available"):
        engine.submit_script("txt2img", "X/Y/Z plot", params(), [1, "1", [], axis(engine, "Face restore"), "true"])
    with pytest.raises(UnknownScript, match="x/y/z plot"):
        engine.submit_script("txt2img", "Outpainting mk2", params(), [])
    assert engine.queue.queued == 0


def test_pasted_grid_infotext_makes_the_same_plot(engine):  # noqa: F811
    first = engine.submit_script("txt2img", "X/Y/Z plot", params(steps=1, seed=-1),
                                 [axis(engine, "Seed"), "-1, -1", [], axis(engine, "Sampler"), "",
                                  ["Euler", "DDIM"]]).wait()
    pasted = engine.paste.read(first.grid.info["parameters"], txt2img=True)
    name, args = pasted.script
    assert name == "X/Y/Z plot" and args[0] == axis(engine, "Seed") and args[3] == axis(engine, "Sampler")
    assert args[5] == ["Euler", "DDIM"]
    again = engine.submit_script("txt2img", name, params(**{k: v for k, v in pasted.values.items()
                                                            if k in ("prompt", "negative_prompt", "steps", "seed",
                                                                     "cfg_scale", "width", "height")}), args).wait()
    assert again.grid.tobytes() == first.grid.tobytes()


def test_interrupt_keeps_the_cells_made(engine):  # noqa: F811
    engine.load_checkpoint("sd1.safetensors")
    job = engine.submit_script("txt2img", "X/Y/Z plot", params(steps=40, save_images=False),
                               [axis(engine, "Seed"), "1-6", [], 0, "", [], 0, "", [], True, True])
    while not job.done.is_set() and job.state.job_no < 1:
        job.done.wait(0.02)
    state = job.state
    assert state.job.endswith(" out of 6") and state.job_count == 6 and 1 / 6 <= state.progress() < 1
    engine.queue.interrupt()
    result = job.wait(120)
    assert result.interrupted and result.grid is not None and result.info["interrupted"]
    assert 1 <= len(result.images) < 6  # the first cell and the interrupted one, not the rest
    assert result.grid.width == 6 * 64 and result.grid.height > 64  # the whole plot, black where nothing was made
    made = len(result.images)
    assert result.grid.crop((made * 64, result.grid.height - 64, 6 * 64, result.grid.height)).getbbox() is None


def test_img2img_plot_of_denoising(engine):  # noqa: F811
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    p = Img2ImgParams(prompt="a cat", init_images=[init], width=64, height=64, steps=2, seed=3)
    result = engine.submit_script("img2img", "X/Y/Z plot", p, [axis(engine, "Denoising", "img2img"), "0.25-0.75 [3]",
                                                                [], 0, "", [], 0, "", [], True, True]).wait()
    assert [t.split("Denoising strength: ")[1].split(",")[0] for t in result.infotexts] == ["0.25", "0.5", "0.75"]


def test_prompt_matrix_grid(engine):  # noqa: F811
    result = engine.submit_script("txt2img", "Prompt matrix", params(prompt="a cat|red|big", steps=1),
                                  [False, True]).wait()
    assert [t.split("\n")[0] for t in result.infotexts] == ["a cat", "a cat, red", "a cat, big", "a cat, red, big"]
    assert result.seeds == [100, 101, 102, 103]
    assert result.grid.width > 128 and result.grid.height > 128 and len(result.images) == 4


def test_prompts_from_file_line_options(engine):  # noqa: F811
    result = engine.submit_script("txt2img", "Prompts from file or textbox", params(prompt="", steps=1, seed=5),
                                  [True, False, "start", 'a dog\n--prompt "a cat" --steps 2 --batch_size 2']).wait()
    assert result.grid is None and [t.split("\n")[0] for t in result.infotexts] == ["a dog", "a cat", "a cat"]
    assert [t.split("Steps: ")[1].split(",")[0] for t in result.infotexts] == ["1", "2", "2"]
    assert result.seeds == [5, 6, 7]


# Each axis this app plots, with two values and the request it varies: what the second cell's infotext says
# (None: the infotext does not record it, so the images must differ instead)
AXES = [
    ("Var. seed", "1, 2", {"subseed_strength": 0.5}, "Variation seed: 2"),
    ("Var. strength", "0.2, 0.6", {}, "Variation seed strength: 0.6"),
    ("Hires steps", "1, 2", {"enable_hr": True, "hr_scale": 1.5}, "Hires steps: 2"),
    ("Hires sampler", "Euler, DDIM", {"enable_hr": True, "hr_scale": 1.5}, "Hires sampler: DDIM"),
    ("Hires upscaler", "Latent, Lanczos", {"enable_hr": True, "hr_scale": 1.5}, "Hires upscaler: Lanczos"),
    ("Denoising", "0.3, 0.6", {"enable_hr": True, "hr_scale": 1.5}, "Denoising strength: 0.6"),
    ("Sigma Churn", "0, 0.5", {"sampler_name": "Euler"}, "Sigma churn: 0.5"),
    ("Sigma min", "0, 0.5", {"sampler_name": "Euler", "s_churn": 0.5}, "Sigma tmin: 0.5"),
    ("Sigma max", "0, 5", {"sampler_name": "Euler", "s_churn": 0.5}, "Sigma tmax: 5"),
    ("Sigma noise", "0.9, 1", {"sampler_name": "Euler", "s_churn": 0.5}, None),
    ("Schedule type", "Karras, Exponential", {}, "Schedule type: Exponential"),
    ("Schedule min sigma", "0.1, 0.2", {"scheduler": "Karras"}, "Schedule min sigma: 0.2"),
    ("Schedule max sigma", "5, 10", {"scheduler": "Karras"}, "Schedule max sigma: 10"),
    ("Schedule rho", "5, 9", {"scheduler": "Karras"}, "Schedule rho: 9"),
    ("Beta schedule alpha", "0.5, 0.7", {"scheduler": "Beta"}, "Beta schedule alpha: 0.7"),
    ("Beta schedule beta", "0.5, 0.7", {"scheduler": "Beta"}, "Beta schedule beta: 0.7"),
    ("Eta", "0.5, 1", {}, None),
    ("Clip skip", "1, 2", {}, "Clip skip: 2"),
    ("UniPC Order", "1, 2", {"sampler_name": "UniPC", "steps": 3}, None),
    ("Always discard next-to-last sigma", "False, True", {}, "Discard penultimate sigma: True"),
    ("Refiner checkpoint", "None, sd1-ckpt.ckpt", {}, "Refiner: sd1-ckpt"),
    ("Refiner switch at", "0.3, 0.6", {"refiner_checkpoint": "sd1-ckpt.ckpt"}, "Refiner switch at: 0.6"),
    ("RNG source", "CPU, NV", {}, "RNG: NV"),
    ("Size", "64x64, 128x64", {}, "Size: 128x64"),
    ("Sampler", "Euler, DDIM", {}, "Sampler: DDIM"),
]


@pytest.mark.parametrize("label, values, request_fields, said", AXES, ids=[a[0] for a in AXES])
def test_each_axis_varies_its_parameter(engine, label, values, request_fields, said):  # noqa: F811
    fields = {"steps": 2, **request_fields}
    result = engine.submit_script("txt2img", "X/Y/Z plot", params(**fields),
                                  [axis(engine, label), values, [], 0, "", [], 0, "", [], False, True, False, False,
                                   False, False, False, 0, True]).wait()
    first, second = result.infotexts
    if said is None:
        assert result.images[0].tobytes() != result.images[1].tobytes()
    else:
        assert said in second and said not in first, (first, second)


def test_hidden_samplers_leave_the_plots_choices_and_still_plot(engine):  # noqa: F811
    """hide_samplers (A1111's) leaves them out of the X/Y/Z sampler axes' dropdown values, as A1111's axis choices;
    a typed one is still plotted."""
    engine.options.update({"hide_samplers": ["DDIM", "Euler a"]})
    names = [a.label for a in engine.scripts.xyz_axes("txt2img")]
    choices = engine.scripts.axis_choices("txt2img")
    for name in ("Sampler", "Hires sampler"):
        listed = choices[names.index(name)]
        assert "Euler" in listed and "DDIM" not in listed and "Euler a" not in listed
    result = engine.submit_script("txt2img", "X/Y/Z plot", params(steps=2, save_images=False),
                                  [axis(engine, "Sampler"), "DDIM, Euler", [], 0, "", [], 0, "", [], True,
                                   True]).wait()
    assert ["Sampler: DDIM" in t for t in result.infotexts] == [True, False]
