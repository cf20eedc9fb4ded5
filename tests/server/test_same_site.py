"""Other web sites open in the user's browser cannot use the server: a Host header that is not one of the
server's names (DNS rebinding) and a changing request from a page of another origin (a cross-site form or
`no-cors` fetch, which needs no CORS answer) are refused with 403; scripts, which send neither header, and
the page itself are not affected. Two live servers: the default one and one behind a named proxy."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests

from modules import cmd_args
from tests.support.server import demo_data, start_server, stop_server

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def local_server(tmp_path_factory):
    data = demo_data(tmp_path_factory.mktemp("same_site"))
    proc, url = start_server(data, "--api")
    yield url, data
    stop_server(proc)


@pytest.fixture(scope="module")
def proxied_server(tmp_path_factory):
    """Behind a reverse proxy named proxy.example, with a front-end at http://app.example allowed by CORS."""
    data = demo_data(tmp_path_factory.mktemp("same_site_proxy"))
    proc, url = start_server(data, "--api", "--allowed-hosts", "proxy.example",
                             "--cors-allow-origins", "http://app.example")
    yield url, data
    stop_server(proc)


def _port(url: str) -> int:
    return urlsplit(url).port


def test_a_host_that_is_not_the_servers_is_refused(local_server):
    url, data = local_server
    port = _port(url)
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", "", "a b"):
        for path in ("/", "/sdapi/v1/options", "/internal/ping", "/gradio_api/info"):
            r = requests.get(url + path, headers={"Host": host}, timeout=30)
            assert r.status_code == 403, (host, path, r.status_code)
            assert "--allowed-hosts" in r.json()["detail"], r.text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}",
                 f"app.localhost:{port}", f"192.168.1.20:{port}"):
        assert requests.get(url + "/sdapi/v1/options", headers={"Host": host}, timeout=30).status_code == 200, host
    assert "Refused GET" in (data / "server.log").read_text()


def test_a_changing_request_from_another_sites_page_is_refused(local_server):
    url, _ = local_server
    port = _port(url)
    for origin in ("http://evil.example", f"http://evil.example:{port}", "null", f"http://localhost:{port + 1}",
                   "garbage"):
        for path in ("/sdapi/v1/interrupt", "/sdapi/v1/skip", "/gradio_api/reset"):
            r = requests.post(url + path, headers={"Origin": origin}, timeout=30)
            assert r.status_code == 403, (origin, path, r.status_code)
            assert "--cors-allow-origins" in r.json()["detail"], r.text
        r = requests.post(url + "/sdapi/v1/options", json={"samples_format": "jpg"}, headers={"Origin": origin},
                          timeout=30)
        assert r.status_code == 403, origin
    assert requests.get(url + "/sdapi/v1/options", timeout=30).json()["samples_format"] == "png"
    # reading is left to the browser's CORS rules (the answer is not shown to the other page)
    assert requests.get(url + "/sdapi/v1/options", headers={"Origin": "http://evil.example"},
                        timeout=30).status_code == 200
    # the server's own page, and scripts without an Origin
    # (the scheme is not compared: a TLS proxy's page is https, and nobody else serves this host and port)
    for headers in ({"Origin": url}, {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"},
                    {"Origin": f"https://127.0.0.1:{port}"}, {}):
        assert requests.post(url + "/sdapi/v1/interrupt", headers=headers, timeout=30).status_code == 200, headers


def test_named_proxy_and_cors_origins_are_let_in(proxied_server):
    url, data = proxied_server
    assert "Host names the server answers to besides addresses and localhost: proxy.example" in \
        (data / "server.log").read_text()
    r = requests.get(url + "/sdapi/v1/options", headers={"Host": "proxy.example"}, timeout=30)
    assert r.status_code == 200
    # a page served through the proxy over HTTPS, whatever Host the proxy passes on
    for headers in ({"Host": "proxy.example", "Origin": "https://proxy.example"},
                    {"Origin": "https://proxy.example"},
                    {"Origin": "http://app.example"}):  # listed by --cors-allow-origins
        assert requests.post(url + "/sdapi/v1/interrupt", headers=headers, timeout=30).status_code == 200, headers
    assert requests.get(url + "/sdapi/v1/options", headers={"Host": "other.example"}, timeout=30).status_code == 403
    assert requests.post(url + "/sdapi/v1/interrupt", headers={"Origin": "http://other.example"},
                         timeout=30).status_code == 403


def test_allowed_hosts_from_the_flags(monkeypatch):
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "studio")
    assert cmd_args.allowed_hosts(cmd_args.parse([])) == (set(), False)
    assert cmd_args.allowed_hosts(cmd_args.parse(["--server-name", "127.0.0.2"])) == ({"127.0.0.2"}, False)
    # a name to bind to counts as the network (it may resolve to any address)
    assert cmd_args.allowed_hosts(cmd_args.parse(["--server-name", "sd.lan"])) == \
        ({"sd.lan", "studio", "studio.local"}, False)
    assert cmd_args.allowed_hosts(cmd_args.parse(["--listen"])) == ({"studio", "studio.local"}, False)
    hosts, any_host = cmd_args.allowed_hosts(cmd_args.parse(["--allowed-hosts", "a.example, b.example"]))
    assert hosts == {"a.example", "b.example"} and not any_host
    assert cmd_args.allowed_hosts(cmd_args.parse(["--allowed-hosts", "*"]))[1] is True


def test_api_log_lines_cannot_be_forged(tmp_path_factory):
    """--api-log writes the decoded path: a %0A in it must not start a line of its own."""
    data = demo_data(tmp_path_factory.mktemp("api_log"))
    proc, url = start_server(data, "--api", "--api-log")
    try:
        requests.get(url + "/sdapi/v1/x%0D%0A12:00:00 INFO [webui] forged", timeout=30)
        requests.get(url + "/sdapi/v1/options", timeout=30)
    finally:
        stop_server(proc)
    lines = (data / "server.log").read_text().splitlines()
    assert not any(line.startswith("12:00:00 INFO [webui] forged") for line in lines)
    assert any("/sdapi/v1/x\\r\\n12:00:00" in line for line in lines), lines[-5:]
