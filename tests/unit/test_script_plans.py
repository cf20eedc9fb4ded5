"""The scripts' plans without a model: X/Y/Z axis types and values (every range syntax, bad values naming the
axis), the loop order, seeds, Prompt matrix combinations, Prompts from file lines, the grid legend."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from modules import images
from modules.generation.params import GenerationParams, Img2ImgParams
from modules.services.errors import BadRequest
from modules.services.scripts import prompt_matrix, prompts_from_file, xyz
from modules.services.scripts.base import CellResult, Env

CHECKPOINTS = {"sd1.safetensors [abc]": ("sd1", "sd1.safetensors"), "other.ckpt [def]": ("other", "other.ckpt")}


def _find(name: str) -> str | None:
    return next((t for t, names in CHECKPOINTS.items() if name in (t, *names)), None)


ENV = Env(_find, lambda: list(CHECKPOINTS), lambda: ["kl-f8.safetensors", "kl-f8-anime.safetensors"],
          lambda: ["dark", "light"])


def base(**kw) -> GenerationParams:
    return GenerationParams(**{"prompt": "a cat, red, big", "negative_prompt": "blurry", "width": 64,
                               "height": 64, "steps": 4, "seed": 10, "subseed": 5, **kw})


def index(label: str, kind: str = "txt2img") -> int:
    return [a.label for a in xyz.axes_for(ENV, kind)].index(label)


def test_axis_types_are_a1111s_in_its_order():
    t2i = [a.label for a in xyz.axes_for(ENV, "txt2img")]
    assert t2i[:12] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale",
                        "Prompt S/R", "Prompt order", "Sampler", "Hires sampler", "Checkpoint name"]
    assert t2i[-14:-9] == ["Refiner checkpoint", "Refiner switch at", "RNG source", "FP8 mode", "Size"]
    assert t2i[-9:] == [f"[Hypertile] {label}" for label in (  # A1111's Hypertile extension's, after the others
        "Unet First pass Enabled", "Unet Second pass Enabled", "Unet Max Depth", "Unet Max Tile Size",
        "Unet Swap Size", "VAE Enabled", "VAE Max Depth", "VAE Max Tile Size", "VAE Swap Size")]
    i2i = [a.label for a in xyz.axes_for(ENV, "img2img")]
    assert i2i[6] == "Image CFG Scale" and "Hires steps" not in i2i and "Cond. Image Mask Weight" in i2i
    refused = {a.label for a in xyz.axes(ENV) if a.refused}
    assert refused == {"Image CFG Scale", "Face restore"}


@pytest.mark.parametrize("text, expected", [
    ("1-5", [1, 2, 3, 4, 5]), ("1-5 (+2)", [1, 3, 5]), ("1-10 [5]", [1, 3, 5, 7, 10]), ("5-1 (-2)", [5, 3, 1]),
    ("2, 4-5, 9", [2, 4, 5, 9]), ("-1, 3", [-1, 3]), ("1 - 3", [1, 2, 3])])
def test_int_ranges(text, expected):
    assert xyz.parse_values(xyz.axes_for(ENV, "txt2img")[index("Steps")], text, [], False, "X") == expected


@pytest.mark.parametrize("text, expected", [
    ("0.5-1.5 (+0.25)", [0.5, 0.75, 1.0, 1.25, 1.5]), ("0-1 [3]", [0.0, 0.5, 1.0]), ("1-3", [1.0, 2.0, 3.0]),
    ("7, 3.5", [7.0, 3.5]), ("1-2 (+0.3)", [1.0, 1.3, 1.6, 1.9])])
def test_float_ranges(text, expected):
    got = xyz.parse_values(xyz.axes_for(ENV, "txt2img")[index("CFG Scale")], text, [], False, "X")
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("label, text, message", [
    ("Steps", "three", "'three' is not a whole number"), ("CFG Scale", "x-y", "is not a number"),
    ("Steps", "1-5 (+0)", "step must not be 0"), ("Steps", "", "no values"), ("CFG Scale", "inf", "not a finite"),
    ("Face restore", "true", "Face restoration")])
def test_bad_values_name_the_axis(label, text, message):
    args = [index(label), text, []]
    with pytest.raises(BadRequest, match=f"X/Y/Z plot: X axis \\({label}\\)") as e:
        xyz.plan(base(), args, ENV, "txt2img")
    assert message in str(e.value)


def test_bad_cell_values_are_refused_by_the_request_checks():
    with pytest.raises(BadRequest, match="X axis \\(Steps\\) value 'Steps: 0'"):
        xyz.plan(base(), [index("Steps"), "0, 2", []], ENV, "txt2img")  # steps must be >= 1
    with pytest.raises(BadRequest, match="unknown checkpoint 'nope'"):
        xyz.plan(base(), [index("Checkpoint name"), "", ["nope"]], ENV, "txt2img")
    with pytest.raises(BadRequest, match="did not find 'dog'"):
        xyz.plan(base(), [index("Prompt S/R"), "dog, cat", []], ENV, "txt2img")
    with pytest.raises(BadRequest, match="x_type 99 is not an axis type index"):
        xyz.plan(base(), [99, "1"], ENV, "txt2img")
    with pytest.raises(BadRequest, match="at most 18 arguments"):
        xyz.plan(base(), [1] * 19, ENV, "txt2img")


def test_axis_type_by_label_and_values_from_the_dropdown():
    p = xyz.plan(base(), ["Sampler", "", ["Euler", "DDIM"]], ENV, "txt2img")
    assert [c.sampler_name for c in p.cells] == ["Euler", "DDIM"]
    p = xyz.plan(base(), ["sampler", "Euler, Heun", [], 0, "", [], 0, "", [], True, False, False, False, False,
                          False, False, 0, True], ENV, "txt2img")  # csv_mode: the text
    assert [c.sampler_name for c in p.cells] == ["Euler", "Heun"]


def test_cells_apply_each_axis():
    p = xyz.plan(base(), [index("Prompt S/R"), "red, green, blue", [], index("Size"), "64x64, 128x64", []],
                 ENV, "txt2img")
    assert [(c.prompt, c.width, c.height) for c in p.cells] == [
        ("a cat, red, big", 64, 64), ("a cat, green, big", 64, 64), ("a cat, blue, big", 64, 64),
        ("a cat, red, big", 128, 64), ("a cat, green, big", 128, 64), ("a cat, blue, big", 128, 64)]
    p = xyz.plan(base(), [index("Prompt order"), "cat, big", []], ENV, "txt2img")
    assert [c.prompt for c in p.cells] == ["a cat, red, big", "a big, red, cat"]
    p = xyz.plan(base(), [index("Clip skip"), "1, 2", [], index("VAE"), "", ["anime", "None"]], ENV, "txt2img")
    assert [c.override_settings for c in p.cells] == [
        {"CLIP_stop_at_last_layers": 1, "sd_vae": "kl-f8-anime.safetensors"},
        {"CLIP_stop_at_last_layers": 2, "sd_vae": "kl-f8-anime.safetensors"},
        {"CLIP_stop_at_last_layers": 1, "sd_vae": "None"}, {"CLIP_stop_at_last_layers": 2, "sd_vae": "None"}]
    p = xyz.plan(base(styles=["dark"]), [index("Styles"), "", ["light"]], ENV, "txt2img")
    assert p.cells[0].styles == ["dark", "light"]
    p = xyz.plan(base(), [index("Always discard next-to-last sigma"), "", ["False", "True"]], ENV, "txt2img")
    assert [c.override_settings for c in p.cells] == [{"always_discard_next_to_last_sigma": False},
                                                       {"always_discard_next_to_last_sigma": True}]
    p = xyz.plan(base(), [index("Token merging ratio"), "0, 0.5", [], index("[Hypertile] Unet First pass Enabled"),
                          "", ["True"], index("[Hypertile] Unet Max Tile Size"), "128", []], ENV, "txt2img")
    assert [c.override_settings for c in p.cells] == [
        {"token_merging_ratio": v, "hypertile_enable_unet": True, "hypertile_max_tile_unet": 128} for v in (0, 0.5)]
    p = xyz.plan(base(), [index("UniPC Order"), "2, 9", []], ENV, "txt2img")
    assert [c.override_settings["uni_pc_order"] for c in p.cells] == [2, 3]  # at most steps - 1, as A1111
    init = Image.new("RGB", (64, 64))
    p = xyz.plan(Img2ImgParams(init_images=[init], width=64, height=64), [index("Denoising", "img2img"),
                                                                          "0.25-0.75 [3]", []], ENV, "img2img")
    assert [c.denoising_strength for c in p.cells] == [0.25, 0.5, 0.75]


def test_costly_axis_is_looped_outermost():
    assert xyz.loop_order((0, 0, 0)) == (2, 1, 0)  # z, y, x: x changes fastest
    assert xyz.loop_order((1.0, 0, 0)) == (0, 2, 1)
    assert xyz.loop_order((0, 0.7, 1.0)) == (2, 1, 0)
    assert xyz.loop_order((0.7, 1.0, 0)) == (1, 0, 2)
    p = xyz.plan(base(), [index("Steps"), "1-3", [], index("Checkpoint name"), "", ["sd1", "other"]], ENV,
                 "txt2img")
    models = [c.override_settings["sd_model_checkpoint"] for c in p.cells]
    assert models == ["sd1.safetensors [abc]"] * 3 + ["other.ckpt [def]"] * 3
    p = xyz.plan(base(), [index("Checkpoint name"), "", ["sd1", "other"], index("Steps"), "1-3", []], ENV,
                 "txt2img")
    models = [c.override_settings["sd_model_checkpoint"] for c in p.cells]
    assert models == ["sd1.safetensors [abc]"] * 3 + ["other.ckpt [def]"] * 3  # x is the costly one: outermost
    assert [c.steps for c in p.cells] == [1, 2, 3, 1, 2, 3]


def test_seeds_fixed_once_kept_or_varied():
    rng = random.Random(1)
    p = xyz.plan(base(seed=-1), [index("Steps"), "1-2", [], index("Seed"), "-1, 7", []], ENV, "txt2img", rng)
    seeds = [c.seed for c in p.cells]
    assert seeds[0] == seeds[1] != -1 and seeds[2:] == [7, 7]
    text = p.compose([None] * 4)  # nothing made: no grid
    assert text.grid is None
    p = xyz.plan(base(seed=-1), [index("Steps"), "1-2", [], 0, "", [], 0, "", [], True, False, False, True],
                 ENV, "txt2img")
    assert [c.seed for c in p.cells] == [-1, -1]  # Keep -1 for seeds
    p = xyz.plan(base(seed=10), [index("Steps"), "1-3", [], index("CFG Scale"), "5, 6", [], 0, "", [], True, False,
                                 False, False, True, True], ENV, "txt2img")
    assert [c.seed for c in p.cells] == [10, 11, 12, 13, 14, 15]  # vary seeds for X and Y


def test_grid_size_is_capped_by_the_setting():
    small = Env(ENV.find_checkpoint, ENV.checkpoints, ENV.vaes, ENV.styles, img_max_size_mp=1)
    with pytest.raises(BadRequest, match="too large .*img_max_size_mp"):
        xyz.plan(base(width=1024, height=1024), [index("Steps"), "1-2", []], small, "txt2img")


@pytest.mark.parametrize("label, text, message", [
    ("Steps", "1-2000", "'1-2000' gives 2000 values; at most 1000 an axis"),
    ("Seed", "1-1000000000000", "'1-1000000000000' gives 1000000000000 values; at most 1000 an axis"),
    ("Seed", "1-10 [1000000000000]", "'1-10 [1000000000000]' gives 1000000000000 values; at most 1000 an axis"),
    ("Seed", "1000000000000-1 (-1)", "gives 1000000000000 values"),
    ("CFG Scale", "0-1 [5000]", "'0-1 [5000]' gives 5000 values; at most 1000 an axis"),
    ("CFG Scale", "0-2500 (+0.5)", "'0-2500 (+0.5)' gives 5001 values; at most 1000 an axis"),
    ("Steps", "1-600, 1-600", "'1-600' gives 600 values after 600 others; at most 1000 an axis"),
    ("Steps", ", ".join(["1"] * 1001), "1001 values; at most 1000 an axis"),
    ("Seed", "1-" + "9" * 5000, "is too long a number"),
    ("CFG Scale", "0-" + "9" * 400 + " (+1)", "is not a range of finite numbers"),
    ("Steps", "1" + " " * 300_000, "the values are 300001 characters; at most 262144"),
    ("Prompt order", "cat, red, big, a, b, c, d", "7 items give 5040 orders; at most 1000 values an axis, so at most "
                                                   "6 items (720 orders)"),
    ("Prompt order", ", ".join(f"w{i}" for i in range(100)), "100 items give 100! orders"),
])
def test_axis_values_are_counted_before_they_are_made(label, text, message, monkeypatch):
    """The security review's cases: ranges, counts and Prompt order's orders are counted, and refused over 1000
    values an axis, before a list of them is made (A1111 makes it first: `1-1000000000` is 36 GB)."""
    def made(*args, **kwargs):
        raise AssertionError("the values were made before they were counted")
    monkeypatch.setattr(xyz.np, "linspace", made)
    monkeypatch.setattr(xyz.itertools, "permutations", made)
    with pytest.raises(BadRequest) as e:
        xyz.plan(base(prompt="cat, red, big, a, b, c, d, " + ", ".join(f"w{i}" for i in range(100))),
                 [index(label), text, []], ENV, "txt2img")
    assert str(e.value).startswith(f"X/Y/Z plot: X axis ({label}): ")
    assert message in str(e.value)


def test_plots_up_to_the_caps_are_made_as_before():
    p = xyz.plan(base(), [index("Steps"), "1-1000", []], ENV, "txt2img")
    assert [c.steps for c in p.cells] == list(range(1, 1001))
    p = xyz.plan(base(), [index("Seed"), "1-10 [1000]", []], ENV, "txt2img")
    assert len(p.cells) == 1000 and p.cells[0].seed == 1 and p.cells[-1].seed == 10
    p = xyz.plan(base(prompt="a, b, c, d, e, f"), [index("Prompt order"), "a, b, c, d, e, f", []], ENV, "txt2img")
    assert len(p.cells) == 720 and len({c.prompt for c in p.cells}) == 720
    p = xyz.plan(base(), [index("Steps"), "1-100", [], index("CFG Scale"), "1-100", []], ENV, "txt2img")
    assert len(p.cells) == 10_000


def test_a_plot_of_more_than_10000_images_is_refused():
    """The grid's megapixels would allow more small cells (img_max_size_mp, which a request may raise to
    10000: 2.4 million 64x64 cells); each cell is a request checked at submission."""
    big = Env(ENV.find_checkpoint, ENV.checkpoints, ENV.vaes, ENV.styles, img_max_size_mp=10000)
    with pytest.raises(BadRequest, match="X/Y/Z plot: 100 x 100 x 2 values make 20000 images; at most 10000 a plot"):
        xyz.plan(base(), [index("Steps"), "1-100", [], index("CFG Scale"), "1-100", [], index("Seed"), "1, 2", []],
                 big, "txt2img")


def test_prompt_sr_is_refused_before_it_makes_a_prompt_over_the_limit():
    """A prompt of 20000 `a`s, each replaced by 100 characters, would be 2 million characters (per cell):
    refused from its length before it is made."""
    with pytest.raises(BadRequest, match="X/Y/Z plot: X axis \\(Prompt S/R\\): prompt: 2020000 characters with "
                                         "'a' replaced by 'bbbbbbbbbb.*'...; at most 65536"):
        xyz.plan(base(prompt="a " * 20_000), [index("Prompt S/R"), "a, " + "b" * 100, []], ENV, "txt2img")
    p = xyz.plan(base(prompt="a " * 20_000), [index("Prompt S/R"), "a, bb", []], ENV, "txt2img")
    assert [len(c.prompt) for c in p.cells] == [40_000, 60_000]


def test_prompt_matrix_combinations():
    parts, prompts = prompt_matrix.combinations("a cat|red|big", False, ", ")
    assert parts == ["red", "big"]
    assert prompts == ["a cat", "a cat, red", "a cat, big", "a cat, red, big"]
    _, prompts = prompt_matrix.combinations("a cat|red", True, " ")
    assert prompts == ["a cat", "red a cat"]
    p = prompt_matrix.plan(base(prompt="x|y|z", batch_size=2), [False, True, "positive", "comma", 0])
    assert [(c.prompt, c.seed, c.batch_size) for c in p.cells] == [
        ("x", 10, 1), ("x, y", 11, 1), ("x, z", 12, 1), ("x, y, z", 13, 1)]
    p = prompt_matrix.plan(base(negative_prompt="n|m"), [False, False, "negative"])
    assert [c.negative_prompt for c in p.cells] == ["n", "n, m"] and {c.seed for c in p.cells} == {10}
    with pytest.raises(BadRequest, match="prompt_type"):
        prompt_matrix.plan(base(), [False, False, "sideways"])


def test_prompt_matrix_counts_the_characters_before_it_makes_the_combinations(monkeypatch):
    """4096 combinations of a prompt at the length limit would be 268 million characters (1 GiB of 4-byte
    characters) in the request's thread: refused, counted exactly before they are made."""
    for text, delimiter in (("a cat|red|big, |x", "comma"), ("a|b|c|d|e", "space"), ("only", "comma")):
        _, prompts = prompt_matrix.combinations(text, False, ", " if delimiter == "comma" else " ")
        total = sum(len(p) for p in prompts)
        monkeypatch.setattr(prompt_matrix, "MAX_TOTAL_CHARS", total)
        prompt_matrix.plan(base(prompt=text), [False, False, "positive", delimiter])
        monkeypatch.setattr(prompt_matrix, "MAX_TOTAL_CHARS", total - 1)
        with pytest.raises(BadRequest, match=f"would be {total} characters in all; at most {total - 1}"):
            prompt_matrix.plan(base(prompt=text), [False, False, "positive", delimiter])
    monkeypatch.undo()
    monkeypatch.setattr(prompt_matrix, "combinations", lambda *a: pytest.fail("made"))
    big = "x" * 65_512 + "|a|b|c|d|e|f|g|h|i|j|k|l"
    with pytest.raises(BadRequest, match="^Prompt matrix: the 4096 combinations of the negative_prompt would be "
                                         "268410880 characters in all; at most 16777216"):
        prompt_matrix.plan(base(negative_prompt=big), [False, False, "negative"])


def test_prompts_from_file_lines():
    assert prompts_from_file.parse_line("a dog", 1) == {"prompt": "a dog"}
    assert prompts_from_file.parse_line('--prompt "a dog, running" --steps 3 --cfg_scale 4.5', 1) == {
        "prompt": "a dog, running", "steps": 3, "cfg_scale": 4.5}
    for line, message in [("--steps many", "--steps 'many' is not a number"), ("--color red", "unknown option"),
                          ("--restore_faces", "face restoration"), ('--prompt "open', "line 2"),
                          ("--steps", "needs a value")]:
        with pytest.raises(BadRequest, match=message):
            prompts_from_file.parse_line(line, 2)
    p = prompts_from_file.plan(base(n_iter=2), [True, False, "end", "one\n\n--prompt two --steps 2 --seed 3\nthree"])
    assert [(c.prompt, c.steps, c.seed) for c in p.cells] == [
        ("a cat, red, big one", 4, 10), ("a cat, red, big two", 2, 3), ("a cat, red, big three", 4, 14)]
    p = prompts_from_file.plan(base(seed=-1), [False, True, "start", "one\ntwo"])
    assert p.cells[0].seed == p.cells[1].seed != -1 and p.cells[0].prompt == "one a cat, red, big"
    with pytest.raises(BadRequest, match="line 1: steps"):
        prompts_from_file.plan(base(), [False, False, "start", "--steps 0"])
    p = prompts_from_file.plan(base(), [False, False, "start", "--prompt a --tiling\n--prompt b --tiling false\nc"])
    assert [c.tiling for c in p.cells] == [True, False, None]  # None: the setting `tiling`


def test_grid_legend_geometry():
    grid = images.image_grid([Image.new("RGB", (64, 64), (255, 0, 0))] * 4, 1, 2)
    drawn = images.draw_grid_annotations(grid, 64, 64, [[("a", True)], [("b", True)]],
                                         [[("c", True)], [("d", False)]], margin=6)
    pad_left = 48  # 3/4 of a cell
    assert drawn.width == 128 + pad_left + 6
    pad_top = drawn.height - 128 - 6
    assert pad_top > 0 and drawn.getpixel((pad_left + 64 + 3, pad_top + 10)) == (255, 255, 255)  # the margin
    assert drawn.getpixel((pad_left + 70 + 5, pad_top + 5)) == (255, 0, 0)
    plain = images.draw_grid_annotations(grid, 64, 64, [[("", True)]] * 2, [[("", True)]] * 2)
    assert plain.size == (128, 128)  # no labels: no band


def _cell(value: int, size=(64, 64)) -> CellResult:
    return CellResult(Image.new("RGB", size, (value, 0, 0)), f"cell {value}\nSteps: 1, Seed: {value}", value,
                      [Image.new("RGB", size, (value, 0, 0))], [f"cell {value}"], [value])


def test_z_axis_grids_sub_grids_and_lone_images():
    args = [index("Seed"), "1, 2", [], index("Var. seed"), "3, 4, 5", [], index("CFG Scale"), "5, 6", [],
            False, True, True, False, False, False, False, 0]
    p = xyz.plan(base(), args, ENV, "txt2img")
    assert len(p.cells) == 12 and [(c.seed, c.subseed, c.cfg_scale) for c in p.cells[:3]] == [
        (1, 3, 5.0), (2, 3, 5.0), (1, 4, 5.0)]
    done = p.compose([_cell(i * 10) for i in range(12)])
    assert done.grid.size == (2 * 128, 192)  # two sub-grids of 2 x 3 cells side by side (no legend)
    assert [im.size for im in done.images[:2]] == [(128, 192), (128, 192)]  # the sub-grids, then the cells
    assert len(done.images) == 2 + 12 and done.seeds[2:] == [i * 10 for i in range(12)]
    assert done.grid.getpixel((128 + 64 + 1, 1)) == (70, 0, 0)  # z=1, x=1, y=0: the eighth cell made
    assert "Z Type: CFG Scale" in done.grid_infotext and "Z Type" not in done.infotexts[0]
    assert 'Fixed Y Values: "3, 4, 5"' in done.grid_infotext
    partial = p.compose([_cell(50)] + [None] * 11)  # interrupted after the first cell: black for the rest
    assert partial.grid.getpixel((70, 1)) == (0, 0, 0) and partial.grid.getpixel((1, 1)) == (50, 0, 0)
    mixed = xyz.plan(base(), [index("Size"), "64x64, 128x64", [], 0, "", [], 0, "", [], False], ENV, "txt2img")
    drawn = mixed.compose([_cell(1), _cell(2, (128, 64))])
    assert drawn.grid.size == (256, 64)  # cells of a Size axis padded to the largest


def test_prompt_matrix_grid_layout():
    p = prompt_matrix.plan(base(prompt="a|b|c|d"), [False, False, "positive", "comma", 4])
    done = p.compose([_cell(i) for i in range(8)])
    # 3 parts: 2 columns (b, c... first half: b, c -> 4 columns) and 2 rows; the legend bands and 4 px margins
    assert len(done.images) == 8 and done.grid.width > 4 * 64 + 3 * 4 and done.grid.height > 2 * 64 + 4
