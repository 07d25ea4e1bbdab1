"""The event contract: docs/asyncapi.yaml, used to validate the events the tests produce."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from mailsvc.events.schema import TYPE_PREFIX

ASYNCAPI = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"
DOCUMENT_URI = "urn:mailsvc:asyncapi"


@functools.cache
def document() -> dict[str, Any]:
    loaded = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def payload_validator(message_key: str) -> jsonschema.Validator:
    """A validator for one message's payload, resolving the document's own ``$ref``s."""
    registry: Registry[Any] = Registry().with_resource(
        DOCUMENT_URI, Resource.from_contents(document(), default_specification=DRAFT7)
    )
    ref = {"$ref": f"{DOCUMENT_URI}#/components/messages/{message_key}/payload"}
    return jsonschema.Draft7Validator(ref, registry=registry)


@functools.cache
def _validators() -> dict[str, jsonschema.Validator]:
    """Routing key (the message's name) -> the validator of its payload."""
    messages = document()["components"]["messages"]
    return {message["name"]: payload_validator(key) for key, message in messages.items()}


def envelope_errors(envelope: dict[str, Any]) -> list[str]:
    """Why a CloudEvent envelope does not match its message in the contract (empty: it does)."""
    event_type = str(envelope.get("type", "")).removeprefix(TYPE_PREFIX)
    validator = _validators().get(event_type)
    if validator is None:
        return [f"{event_type}: no message in docs/asyncapi.yaml"]
    return [
        f"{event_type} {error.json_path}: {error.message[:300]}"
        for error in validator.iter_errors(envelope)
    ]
