"""`--api-auth` / `--gradio-auth` values: A1111's `user:pass,user2:pass2` form, files, and checking."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modules import auth, cmd_args

ROOT = Path(__file__).resolve().parents[2]


def test_pairs_split_on_commas_and_the_first_colon():
    assert auth.parse_pairs("alice:s3cret, bob:pa:ss word ,") == [("alice", "s3cret"), ("bob", "pa:ss word")]
    assert auth.parse_pairs("eve:") == [("eve", "")]
    for bad in ("alice", ":nobody"):
        with pytest.raises(auth.CredentialsError, match="user:password"):
            auth.parse_pairs(bad)


def test_check_needs_the_right_user_with_the_right_password():
    creds = auth.Credentials([("alice", "s3cret"), ("bob", "pa:ss")])
    assert creds.check("alice", "s3cret") and creds.check("bob", "pa:ss") and creds("bob", "pa:ss")
    for user, password in [("alice", "pa:ss"), ("bob", "s3cret"), ("alice", "S3cret"), ("alice", "s3cret "),
                           ("Alice", "s3cret"), ("", ""), ("mallory", "s3cret")]:
        assert not creds.check(user, password), (user, password)


def test_flags_and_file_are_combined(tmp_path):
    f = tmp_path / "logins.txt"
    f.write_text("carol:one\n\ndave:two,erin:three\n")
    creds = auth.from_flags("alice:zero", str(f), flag="--gradio-auth")
    assert creds.users == ["alice", "carol", "dave", "erin"] and creds.check("erin", "three")
    assert auth.from_flags(None) is None
    with pytest.raises(auth.CredentialsError, match="cannot read"):
        auth.from_flags(None, str(tmp_path / "missing.txt"), flag="--gradio-auth")
    with pytest.raises(auth.CredentialsError):
        auth.from_flags(" , ")


def test_cmd_flags_hide_passwords():
    ns = cmd_args.parse(["--api", "--api-auth", "alice:s3cret", "--gradio-auth", "bob:pw"])
    flags = cmd_args.public_flags(ns)
    assert flags["api_auth"] == flags["gradio_auth"] == "***" and ns.api_auth == "alice:s3cret"
    assert cmd_args.public_flags(cmd_args.parse([]))["api_auth"] is None


def test_a_malformed_value_stops_start_up_with_a_clear_message(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "webui.py"), "--nowebui", "--api-auth", "nocolon",
                        "--data-dir", str(tmp_path), "--skip-torch-cuda-test"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "COMMANDLINE_ARGS": ""})
    assert r.returncode == 2 and "--api-auth: expected user:password" in r.stderr
