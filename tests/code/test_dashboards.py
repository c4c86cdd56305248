"""The Grafana dashboard and the Prometheus rules ask only for metrics the service exports.

That the service exports every name of ``METRIC_NAMES`` is checked against a real model
server in tests/integration/test_metrics.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from eye_model.config import METRICS_PORT
from eye_model.drift import heuristics
from eye_model.metrics import CONFIDENCE_BUCKETS, METRIC_NAMES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: A metric name in a PromQL expression (ours all start with eye_model_).
METRIC = re.compile(r"\beye_model_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def _base(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in METRIC_NAMES:
            return name.removesuffix(suffix)
    return name


def _dashboard_exprs() -> list[str]:
    exprs = []
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            exprs += [target["expr"] for target in panel.get("targets", [])]
    return exprs


def _rules() -> list[dict[str, str]]:
    config = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in config["groups"] for rule in group["rules"]]


def test_every_dashboard_and_alert_query_names_exported_metrics() -> None:
    exprs = _dashboard_exprs() + [rule["expr"] for rule in _rules()]
    assert len(exprs) >= 10
    used = {_base(name) for expr in exprs for name in METRIC.findall(expr)}
    assert used, exprs
    assert used <= set(METRIC_NAMES), f"unknown metrics: {used - set(METRIC_NAMES)}"
    # The dashboard covers what the issue asks for.
    dashboard = " ".join(_dashboard_exprs())
    for needed in (
        "eye_model_request_seconds_count",
        'status!="ok"',
        "histogram_quantile(0.99",
        "by (predicted_class)",
        "eye_model_confidence_sum",
        "eye_model_telemetry_backlog_records",
    ):
        assert needed in dashboard, needed


def test_alert_rules_use_the_drift_heuristics_thresholds() -> None:
    rules = {rule["alert"]: rule["expr"] for rule in _rules()}
    assert (
        rules["EyeModelLowMeanConfidence"]
        .rstrip()
        .endswith(f"< {heuristics.LOW_CONFIDENCE_MEAN:g}")
    )
    low = rules["EyeModelManyLowConfidencePredictions"]
    assert f'le="{heuristics.LOW_CONFIDENCE_CUTOFF:g}"' in low
    assert low.rstrip().endswith(f"> {heuristics.LOW_CONFIDENCE_RATIO:g}")
    assert heuristics.LOW_CONFIDENCE_CUTOFF in CONFIDENCE_BUCKETS  # the share is exact
    assert rules["EyeModelOneClassDominates"].rstrip().endswith(f"> {heuristics.CLASS_DOMINANCE:g}")
    assert (
        rules["EyeModelSlowInference"]
        .rstrip()
        .endswith(f"> {heuristics.SLOW_INFERENCE_MS / 1000:g}")
    )


def test_compose_runs_prometheus_and_grafana_on_the_metrics_port() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["model"]["environment"]["EYE_MODEL_METRICS_PORT"] == str(METRICS_PORT)
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == [f"model:{METRICS_PORT}"]
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{service} mounts a missing {source}"
