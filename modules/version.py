"""The program's version, as written into infotexts (`Version: ...`).

It deliberately does not look like an A1111 version ("v1.10.1"): A1111 applies compatibility
rewrites to infotexts whose Version parses as an old release of its own.
"""

VERSION = "0.1.0"
INFOTEXT_VERSION = f"webui-{VERSION}"
