"""The alert rules (docker/prometheus/alerts.yaml) and the Grafana dashboard
(docker/grafana/mailsvc-dashboard.json) speak of metrics mailsvc exports, with their labels; with
promtool installed (Debian's prometheus package), the rules and the metric names pass its checks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailsvc import metrics

DOCKER = Path(__file__).parents[2] / "docker"
RULES = DOCKER / "prometheus" / "alerts.yaml"
DASHBOARD = DOCKER / "grafana" / "mailsvc-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
NAME = re.compile(r"\b(mailsvc_[a-z0-9_]+)\b(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def exported() -> dict[str, tuple[str, ...]]:
    """Every series name mailsvc can export -> the labels it has."""
    found: dict[str, tuple[str, ...]] = {}
    for metric in vars(metrics._metrics()).values():
        kind = metric._type
        base = metric._name.removesuffix("_total") if kind == "counter" else metric._name
        for suffix in SUFFIXES[kind]:
            labels = tuple(metric._labelnames) + (("le",) if suffix == "_bucket" else ())
            found[base + suffix] = labels
    return found


def check_expression(expr: str, known: dict[str, tuple[str, ...]]) -> list[str]:
    """What is wrong with ``expr``: unknown metrics, matchers or groupings on unknown labels."""
    problems: list[str] = []
    names = NAME.findall(expr)
    labels: set[str] = set()
    for name, matchers in names:
        if name not in known:
            problems.append(f"unknown metric {name}")
            continue
        labels |= set(known[name])
        problems += [f"{name} has no label {label}" for label in MATCHER.findall(matchers)
                     if label not in known[name]]
    for group in GROUPING.findall(expr):
        problems += [f"grouping by unknown label {label}" for label in
                     (part.strip() for part in group.split(",")) if label and label not in labels]
    return problems


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_every_alert_names_exported_metrics_and_labels() -> None:
    known = exported()
    found = rules()
    assert len(found) >= 4
    for rule in found:
        assert rule["alert"].startswith("Mailsvc")
        assert rule["annotations"]["summary"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        expr = rule["expr"]
        if rule["alert"] == "MailsvcDown":  # Prometheus' own `up` of the scrape job
            assert expr.startswith("up{")
            continue
        assert NAME.search(expr), rule["alert"]
        assert check_expression(expr, known) == [], rule["alert"]


def test_the_alerts_the_operations_guide_promises_exist() -> None:
    names = {rule["alert"] for rule in rules()}
    assert {"MailsvcIntakeBacklogOld", "MailsvcOutboxOld", "MailsvcImapFailing",
            "MailsvcQuarantineGrowing"} <= names
    guide = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    for name in names:
        assert name in guide, name


def test_every_dashboard_query_names_exported_metrics_and_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported()
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    covered: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert check_expression(target["expr"], known) == [], (panel["title"], target)
            covered |= {name for name, _ in NAME.findall(target["expr"])}
    bases = {name.removesuffix(suffix) for name in covered
             for suffix in ("_bucket", "_count", "_sum", "_total") if name.endswith(suffix)}
    exported_bases = {metric._name for metric in vars(metrics._metrics()).values()}
    assert exported_bases <= covered | bases, exported_bases - covered - bases


def test_the_checker_catches_a_wrong_name_and_a_wrong_label() -> None:
    known = exported()
    assert check_expression("rate(mailsvc_smtp_replies_total{code=\"451\"}[5m])", known) == []
    assert check_expression("mailsvc_no_such_metric", known) == [
        "unknown metric mailsvc_no_such_metric"]
    assert check_expression("mailsvc_smtp_replies_total{kode=\"451\"}", known) == [
        "mailsvc_smtp_replies_total has no label kode"]
    assert check_expression("sum by (mailbox) (mailsvc_smtp_replies_total)", known) == [
        "grouping by unknown label mailbox"]


PROMTOOL = shutil.which("promtool")
# Optional on a developer's machine; CI installs it (scripts/test) and must not skip.
NO_PROMTOOL = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"),
    reason="promtool not installed (Debian: prometheus)",
)


@NO_PROMTOOL
def test_promtool_accepts_the_rules() -> None:
    assert PROMTOOL is not None, "promtool is missing: apt-get install prometheus"
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@NO_PROMTOOL
def test_promtool_finds_nothing_to_lint_in_the_metric_names() -> None:
    assert PROMTOOL is not None, "promtool is missing: apt-get install prometheus"
    metrics.register()
    metrics.record_smtp_reply("250 2.0.0 Ok")
    metrics.record_imap_error("lint", "login")
    metrics.set_imap_connected("lint", False)
    metrics.record_relay_batch(2, 0.01, published=1, unroutable=1, unconfirmed=0)
    body, _ = metrics.exposition()
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                            check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
