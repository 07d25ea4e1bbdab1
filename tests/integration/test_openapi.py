"""The OpenAPI document as a client generator reads it: a valid OpenAPI 3 document, errors as
application/problem+json, readable unique operation ids, a tag on every operation, servers, and
the document and /docs where a FastAPI user looks for them."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from mailsvc.api.app import create_app
from mailsvc.bootstrap import open_services
from tests.conftest import base_settings

KEY = "openapi-test-key-0123456789"


@pytest.fixture
async def client(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = base_settings(sqlite_url, api_keys=[KEY])
    async with open_services(settings, migrate=False) as services:
        transport = httpx.ASGITransport(app=create_app(services))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
async def document(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200
    found: dict[str, Any] = response.json()
    return found


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in document["paths"].items()
            for method, op in item.items()]


async def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)
    info = document["info"]
    assert info["title"] == "mailsvc"
    assert info["version"]
    assert "application/problem+json" in info["description"]
    assert [server["url"] for server in document["servers"]] == ["/"]


async def test_every_error_is_documented_as_a_problem(document: dict[str, Any]) -> None:
    errors = 0
    for path, method, op in operations(document):
        for status, response in op["responses"].items():
            if status[0] in "45":
                errors += 1
                assert list(response["content"]) == ["application/problem+json"], (
                    path, method, status)
                schema = response["content"]["application/problem+json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}
        if path.startswith("/api/v1/"):
            assert {"401", "422", "429"} <= set(op["responses"]), (path, method)
            if "requestBody" in op:
                assert "413" in op["responses"], (path, method)
    assert errors > 100
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status"} <= set(problem["properties"])


async def test_operation_ids_are_readable_and_unique(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert [i for i, n in Counter(ids).items() if n > 1] == []
    assert all(i.isidentifier() and "api_v1" not in i for i in ids), ids
    assert {"list_users", "create_account", "get_email", "timeline_contact"} <= set(ids)


async def test_every_operation_has_a_described_tag(document: dict[str, Any]) -> None:
    described = {tag["name"] for tag in document["tags"] if tag.get("description")}
    for path, method, op in operations(document):
        assert op.get("tags"), (path, method)
        assert set(op["tags"]) <= described, (path, method, op["tags"])
        assert op.get("summary"), (path, method)


async def test_the_document_and_docs_are_at_the_root_too(client: httpx.AsyncClient) -> None:
    key = {"Authorization": f"Bearer {KEY}"}
    for alias, target in (("/openapi.json", "/api/v1/openapi.json"), ("/docs", "/api/v1/docs")):
        assert (await client.get(alias)).status_code == 401  # the docs need a key here too
        moved = await client.get(alias, headers=key)
        assert moved.status_code == 307
        assert moved.headers["location"] == target
    followed = await client.get("/openapi.json", headers=key, follow_redirects=True)
    assert followed.status_code == 200
    assert followed.json()["info"]["title"] == "mailsvc"
