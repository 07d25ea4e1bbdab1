"""The REST API in tests: checking an answer (the ``client`` fixture is in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import httpx


def ok(response: httpx.Response, status: int = 200) -> Any:
    """The JSON body of ``response`` (None when it has none) after checking its status; the
    failure shows the body."""
    assert response.status_code == status, response.text
    return response.json() if response.content else None
