"""What the services refuse a request with: a BadRequest (a 4xx) whose message says what is wrong."""

from __future__ import annotations

from pydantic import ValidationError


class BadRequest(ValueError):
    """The request cannot be served as asked; the message says why."""


class UnknownOption(BadRequest):
    """A settings key that does not exist."""


class UnusableCheckpoint(BadRequest):
    """A checkpoint the request named (sd_model_checkpoint) that cannot be loaded: refused or unreadable."""


class UnknownScript(BadRequest):
    """A script_name that names no script here (A1111 answers 422)."""
    status_code = 422


class Interrupted(BadRequest):
    """The job was interrupted before it made what the request waits for (nothing to answer with)."""
    status_code = 409


class OverLimit(BadRequest):
    """The request asks for more than the server's limits allow (modules/limits.py); the message says which
    limit and the flag that raises it."""


def describe_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc and loc not in msg else msg)
    return "; ".join(parts)
