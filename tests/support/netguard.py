"""A network guard for the offline tests: a Python audit hook that records and refuses every attempt to reach
another machine (a connection, a datagram or a name lookup for anything but loopback) and every new process.

Audit hooks (PEP 578) see what the socket module does at the C boundary, whichever library asks: requests,
urllib, httpx, asyncio, huggingface_hub. A process forked from a guarded one keeps the hook. Each attempt is
appended to a JSON-lines file as it happens (a hook cannot be removed, so nothing is lost at exit).

As a runner, the guard starts a script under the hook:

    python tests/support/netguard.py RECORD.jsonl webui.py --port 0 ...
"""

from __future__ import annotations

import ipaddress
import json
import os
import runpy
import socket
import sys
import threading
from pathlib import Path

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})

_lock = threading.Lock()


def is_loopback(host) -> bool:
    """Whether a host (name or address, as a socket call gets it) is this machine's loopback. An empty host
    (a wildcard bind, getaddrinfo(None, port)) stays on this machine too."""
    if host is None or host in ("", b""):
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%")[0].lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _remote_host(event: str, args: tuple):
    """The host an event tries to reach, or None when it stays on this machine."""
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        sock, address = args[0], args[1]
        family = getattr(sock, "family", None)
        if family not in (socket.AF_INET, socket.AF_INET6):
            return None  # a Unix socket, netlink: local by nature
        host = address[0] if isinstance(address, tuple) and address else address
        return None if is_loopback(host) else host
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
        host = args[0] if args else None
        return None if is_loopback(host) else host
    return None


def install(record: Path) -> None:
    """Records every remote attempt and every new process in `record` (JSON lines: event, host, pid) and
    refuses the attempts (PermissionError). Process starts are recorded, not refused."""
    record = Path(record)

    def write(entry: dict) -> None:
        with _lock, open(record, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def hook(event: str, args: tuple) -> None:
        if event.startswith("socket."):
            host = _remote_host(event, args)
            if host is None:
                return
            write({"event": event, "host": str(host), "pid": os.getpid()})
            raise PermissionError(f"netguard: {event} to {host} refused (the app must stay offline)")
        if event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                     "os.forkpty"):
            what = args[0] if args and event != "os.fork" else ""
            write({"event": event, "what": str(what)[:200], "pid": os.getpid()})

    sys.addaudithook(hook)


def read(record: Path) -> list[dict]:
    """What a guarded process recorded (nothing when the file was never written)."""
    try:
        text = Path(record).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def main(argv: list[str]) -> None:
    record, script, *rest = argv
    install(Path(record))
    script_path = Path(script).resolve()
    sys.argv = [str(script_path), *rest]
    sys.path[0] = str(script_path.parent)  # the script's folder first, as `python script.py` has it (not ours)
    runpy.run_path(str(script_path), run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
