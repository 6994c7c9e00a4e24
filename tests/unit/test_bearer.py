"""The Bearer check behind ingest, the API and /metrics: malformed headers are refused."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from collector.web.auth import bearer_ok

TOKEN = "s3cret-token-0123456789"


def request(authorization: str | None) -> Any:
    headers = {} if authorization is None else {"Authorization": authorization}
    return SimpleNamespace(headers=headers)


@pytest.mark.parametrize("header", [
    None, "", "Bearer", "Bearer ", "Basic " + TOKEN, "Bearer wrong",
    "Bearer s3cret-token-012345678ü",  # non-ASCII: compare_digest on str raised (a 500)
    "Bearer \udcff", "Bearer " + TOKEN + "x",
])
def test_anything_but_the_token_is_refused(header: str | None) -> None:
    assert bearer_ok(request(header), TOKEN) is False


def test_the_token_is_accepted_and_no_token_means_open() -> None:
    assert bearer_ok(request("Bearer " + TOKEN), TOKEN)
    assert bearer_ok(request("bearer  " + TOKEN + " "), TOKEN)
    assert bearer_ok(request(None), "")
    assert bearer_ok(request("Bearer ü"), "ü-token") is False
    assert bearer_ok(request("Bearer ü-token"), "ü-token")
