"""docs/asyncapi.yaml describes every event the code records, so the docs cannot fall behind."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.contract import envelope_errors

ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI = ROOT / "docs" / "asyncapi.yaml"
# The official AsyncAPI 3.0.0 JSON Schema (npm package @asyncapi/specs, schemas/3.0.0-without-$id).
SPEC_SCHEMA = ROOT / "tests" / "schemas" / "asyncapi-3.0.0.json"

# The routing keys consumers were promised (DESIGN.md, docs/events.md).
ROUTING_KEYS = (
    "email.received", "email.linked", "email.quarantined", "email.unlinked",
    "user.created", "account.created", "contact.created", "contact.bouncing",
    "opportunity.created", "opportunity.updated", "opportunity.stage_changed",
    "opportunity.won", "opportunity.lost",
    "inbox_lead.created", "inbox_lead.converted", "inbox_lead.archived",
    "ticket.created", "ticket.updated",
)

# record_event(session, "type.name", ...) or record_event(session, f"quote.{status}", ...),
# also when the arguments start on the next line.
RECORD_EVENT = re.compile(r'record_event\(\s*session\s*,\s*(f?)"([^"]+)"')


def recorded_types() -> dict[str, list[str]]:
    """Event type literal (f-strings keep their ``{...}``) -> the files that record it."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "mailsvc").rglob("*.py")):
        for match in RECORD_EVENT.finditer(path.read_text(encoding="utf-8")):
            literal = match.group(2)
            found.setdefault(literal, []).append(str(path.relative_to(ROOT)))
    return found


def as_pattern(literal: str) -> re.Pattern[str]:
    """``quote.{status}`` -> a pattern matching ``quote.sent``, ``quote.accepted``, ..."""
    parts = re.split(r"\{[^}]*\}", literal)
    return re.compile("[a-z_]+".join(re.escape(p) for p in parts))


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def messages(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Routing key (the message name) -> message."""
    return {m["name"]: m for m in document["components"]["messages"].values()}


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_it_is_an_asyncapi_3_document(document: dict[str, Any]) -> None:
    assert str(document["asyncapi"]).startswith("3.")
    assert document["info"]["title"] and document["info"]["version"]
    assert document["channels"] and document["operations"]


def test_it_is_valid_against_the_official_asyncapi_3_schema(document: dict[str, Any]) -> None:
    schema = json.loads(SPEC_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{e.json_path}: {e.message[:200]}" for e in validator.iter_errors(document)]
    assert not errors, f"{len(errors)} AsyncAPI schema errors, first: {errors[:3]}"


def test_the_examples_are_valid_against_their_message_schema(document: dict[str, Any]) -> None:
    for key, message in document["components"]["messages"].items():
        for example in message.get("examples", []):
            errors = envelope_errors(example["payload"])
            assert not errors, (key, errors[:3])


def test_every_promised_routing_key_has_a_message(messages: dict[str, dict[str, Any]]) -> None:
    missing = [key for key in ROUTING_KEYS if key not in messages]
    assert not missing, f"docs/asyncapi.yaml lacks messages for {missing}"


def test_every_recorded_event_type_is_documented(messages: dict[str, dict[str, Any]]) -> None:
    recorded = recorded_types()
    assert "email.received" in recorded, "the scan found no record_event calls: regex out of date?"
    missing = {
        literal: files for literal, files in recorded.items()
        if not any(as_pattern(literal).fullmatch(name) for name in messages)
    }
    assert not missing, f"event types recorded in the code but not in docs/asyncapi.yaml: {missing}"


def test_documented_types_the_code_does_not_record_are_marked_planned(
    messages: dict[str, dict[str, Any]],
) -> None:
    patterns = [as_pattern(literal) for literal in recorded_types()]
    emitted = {name for name in messages if any(p.fullmatch(name) for p in patterns)}
    wrong = sorted(
        name for name, message in messages.items()
        if message.get("x-mailsvc-emitted", True) != (name in emitted)
    )
    assert not wrong, (
        f"x-mailsvc-emitted disagrees with the code for {wrong}: mark types the code does not "
        "record yet with `x-mailsvc-emitted: false` and PLANNED in the description, and drop the "
        "mark once they are recorded"
    )


def test_each_message_is_a_cloudevent_of_its_own_type(
    document: dict[str, Any], messages: dict[str, dict[str, Any]],
) -> None:
    for name, message in messages.items():
        envelope, specific = message["payload"]["allOf"]
        assert envelope == {"$ref": "#/components/schemas/CloudEvent"}, name
        assert specific["properties"]["type"]["const"] == f"com.mailsvc.{name}"
        assert message["bindings"]["amqp"]["messageType"] == name
    cloudevent = document["components"]["schemas"]["CloudEvent"]["properties"]
    assert cloudevent["specversion"]["const"] == "1.0"
    assert cloudevent["source"]["const"] == "urn:mailsvc"


def test_each_routing_key_has_a_channel_on_the_topic_exchange(
    document: dict[str, Any], messages: dict[str, dict[str, Any]],
) -> None:
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == set(messages)
    for channel in document["channels"].values():
        binding = resolve(document, channel["bindings"]["$ref"])["amqp"]
        assert binding["is"] == "routingKey"
        assert binding["exchange"]["type"] == "topic" and binding["exchange"]["durable"]


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(document):
        resolve(document, ref)


def test_the_exchange_name_is_the_default_setting(document: dict[str, Any]) -> None:
    from mailsvc.config import Settings

    exchange = document["components"]["channelBindings"]["exchange"]["amqp"]["exchange"]["name"]
    assert exchange == Settings.model_fields["amqp_exchange"].default


def test_the_examples_match_the_envelope_the_relay_builds(
    messages: dict[str, dict[str, Any]],
) -> None:
    from datetime import UTC, datetime

    from mailsvc.events.schema import cloudevent

    built = cloudevent("x", "email.linked", datetime.now(UTC), {}, "email/1")
    for name, message in messages.items():
        for example in message.get("examples", []):
            payload = example["payload"]
            assert set(payload) == set(built), name
            assert payload["type"] == built["type"].replace("email.linked", name)
            assert payload["source"] == built["source"]
            assert payload["specversion"] == built["specversion"]
