"""The network guard the offline test relies on (tests/support/netguard.py): it must record and refuse what
leaves the machine, from the process and from a child forked by it, and let loopback through. If it missed
something, tests/browser/test_offline.py would pass for the wrong reason."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support import netguard
from tests.support.server import ROOT

# Each attempt is made by a different library path; none can succeed: the guard refuses it before any packet.
ATTEMPTS = textwrap.dedent('''
    import os, socket, threading, urllib.request

    # loopback works: a listening socket here and a connection to it
    server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=5)
    client.close(); server.close()
    socket.getaddrinfo("localhost", 80)

    def attempt(label, fn):
        try:
            fn()
            print(label, "went through")
        except OSError as e:  # the guard's PermissionError, or urllib's URLError around it
            print(label, "refused:", "netguard" in str(e))

    attempt("connect", lambda: socket.create_connection(("192.0.2.1", 80), timeout=1))  # TEST-NET-1
    attempt("lookup", lambda: socket.getaddrinfo("example.com", 443))
    attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("198.51.100.7", 53)))
    attempt("urllib", lambda: urllib.request.urlopen("http://example.org/", timeout=1))
    t = threading.Thread(target=attempt, args=("thread", lambda: socket.gethostbyname("example.net")))
    t.start(); t.join()
    pid = os.fork()
    if pid == 0:
        attempt("child", lambda: socket.create_connection(("2001:db8::1", 80), timeout=1))
        os._exit(0)
    os.waitpid(pid, 0)
''')


def test_the_guard_records_and_refuses_every_remote_attempt_and_lets_loopback_through(tmp_path):
    script = tmp_path / "attempts.py"
    script.write_text(ATTEMPTS)
    record = tmp_path / "record.jsonl"
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "support" / "netguard.py"), str(record), str(script)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    for label in ("connect", "lookup", "udp", "urllib", "thread", "child"):
        assert f"{label} refused: True" in lines, run.stdout

    entries = netguard.read(record)
    hosts = [e["host"] for e in entries if e["event"].startswith("socket.")]
    assert hosts == ["192.0.2.1", "example.com", "198.51.100.7", "example.org", "example.net", "2001:db8::1"], entries
    assert not any(netguard.is_loopback(h) for h in hosts)
    assert [e["event"] for e in entries if not e["event"].startswith("socket.")] == ["os.fork"]


def test_loopback_is_told_apart_from_everything_else():
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "", None, b"127.0.0.1"):
        assert netguard.is_loopback(host), host
    for host in ("0.0.0.1", "10.0.0.1", "192.168.1.2", "2001:db8::1", "example.com", "localhost.example.com",
                 "127.0.0.1.nip.io", 12345):
        assert not netguard.is_loopback(host), host
