"""Tokens a worker must have before it serves HTTP beyond this machine.

On a loopback address only local processes can call the worker, so no token is fine
(the local stack, tests).  On any other address an empty, short or shipped-placeholder
token is a configuration mistake, refused at start-up instead of found in production.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

#: shortest token accepted on a non-loopback address
MIN_TOKEN_CHARS = 16
#: what example files and docs ship; a token made of these letters is not a secret
_PLACEHOLDERS = ("changeme", "replaceme", "secret", "password", "token", "example",
                 "xxxxxxxx")


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: may resolve to anything


def is_placeholder(token: str) -> bool:
    letters = re.sub(r"[^a-z]", "", token.lower())
    return any(p in letters for p in _PLACEHOLDERS[:2]) or letters in _PLACEHOLDERS


def token_problems(web: Any) -> list[str]:
    """Why ``web``'s tokens are unfit for its bind address (empty list: fit)."""
    if is_loopback(web.host):
        return []
    problems = []
    where = f"web.host {web.host!r} is not a loopback address"
    for name in ("ingest_token", "api_token"):
        token = getattr(web, name).get_secret_value()
        env = f"COLLECTOR_WEB__{name.upper()}"
        if not token:
            if not web.allow_anonymous:
                problems.append(f"web.{name} ({env}) is empty and {where}; set a token of "
                                f"{MIN_TOKEN_CHARS}+ characters (or web.allow_anonymous=true "
                                "on a trusted network)")
        elif len(token) < MIN_TOKEN_CHARS:
            problems.append(f"web.{name} ({env}) is shorter than {MIN_TOKEN_CHARS} "
                            f"characters and {where}")
        elif is_placeholder(token):
            problems.append(f"web.{name} ({env}) is a placeholder, not a secret, and "
                            f"{where}")
    return problems
