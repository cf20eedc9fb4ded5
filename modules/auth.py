"""User names and passwords for `--api-auth` and `--gradio-auth` (A1111's `user:pass,user2:pass2` form).

Checking a login costs the same time whichever part is wrong and however many accounts there are:
both sides are hashed to equal length and compared with `hmac.compare_digest`, and every account is
compared, so a client can learn neither a valid user name nor a password prefix from timing.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path


class CredentialsError(ValueError):
    """A malformed `--api-auth` / `--gradio-auth` value or file."""


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class Credentials:
    def __init__(self, pairs: list[tuple[str, str]]):
        if not pairs:
            raise CredentialsError("no user:password pair given")
        self.users = [user for user, _ in pairs]
        self._pairs = [(_digest(user), _digest(password)) for user, password in pairs]

    def check(self, user: str, password: str) -> bool:
        u, p = _digest(user), _digest(password)
        ok = False
        for cu, cp in self._pairs:
            user_ok = hmac.compare_digest(u, cu)
            password_ok = hmac.compare_digest(p, cp)
            ok |= user_ok & password_ok
        return ok

    def __call__(self, user: str, password: str) -> bool:  # gradio's `auth=` calls it like this
        return self.check(user, password)


def parse_pairs(text: str, source: str = "--api-auth") -> list[tuple[str, str]]:
    """`user:pass,user2:pass2` (a password may contain ':'; blanks around entries are ignored)."""
    pairs = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        user, sep, password = entry.partition(":")
        if not sep or not user:
            raise CredentialsError(f"{source}: expected user:password, got an entry without ':' or user name")
        pairs.append((user, password))
    return pairs


def from_flags(value: str | None, path: str | None = None, flag: str = "--api-auth") -> Credentials | None:
    """Credentials from a flag's value and/or a file of such values (one or more per line), or None."""
    pairs = parse_pairs(value, flag) if value else []
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise CredentialsError(f"{flag}-path: cannot read {path}: {e.strerror}") from None
        for line in lines:
            pairs += parse_pairs(line, f"{flag}-path {path}")
    return Credentials(pairs) if (value or path) else None
