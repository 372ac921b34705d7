"""Monitoring assets agree with each other and with what Airflow and AstrID really emit.

Chain checked: StatsD names (astrid.metrics.METRICS + Airflow's registry/source) → statsd-exporter
mapping → Prometheus names → PromQL in the alert rules and the Grafana dashboard. Everything is
parsed from the files; nothing here is a hand-kept list of metric names.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from astrid.config import InferenceSchedulingConfig
from astrid.metrics import METRICS
from tests import monitoring_config as mc

REPO = Path(__file__).resolve().parents[2]
MON = REPO / "include" / "monitoring"
MAPPING = MON / "statsd-exporter" / "mapping.yml"
PROMETHEUS = MON / "prometheus" / "prometheus.yml"
ALERTS = MON / "prometheus" / "alerts.yml"
ALERTS_TEST = MON / "prometheus" / "alerts.test.yml"
DATASOURCES = MON / "grafana" / "provisioning" / "datasources" / "datasource.yml"
PROVIDERS = MON / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD = MON / "grafana" / "dashboards" / "astrid.json"
METRICS_DOC = REPO / "docs" / "metrics.md"
RUNBOOK = REPO / "docs" / "runbook.md"

DAG = "astrid_realtime_inference"
# Series Prometheus makes itself (not from statsd-exporter).
PROMETHEUS_BUILTIN = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"}
PROM_TYPE_OF = {"counter": {"counter"}, "gauge": {"gauge"}, "timer": {"histogram", "summary"}}
NO_PROMTOOL = (
    "promtool not installed (Debian/Ubuntu: `apt-get install prometheus` provides /usr/bin/promtool)"
)


@pytest.fixture(scope="module")
def mapping() -> mc.StatsdMapping:
    return mc.load_mapping(MAPPING)


@pytest.fixture(scope="module")
def airflow_emitted() -> list[mc.EmittedMetric]:
    try:
        return mc.airflow_emitted_metrics()
    except ModuleNotFoundError:  # pragma: no cover - Airflow is in requirements
        pytest.skip("apache-airflow not installed")


def inline(text: str) -> mc.StatsdMapping:
    return mc.load_mapping(text=textwrap.dedent(text))


def expected_prom_name(base: str, mtype: str) -> str:
    stem = base.replace(".", "_")
    return {"counter": f"{stem}_total", "gauge": stem, "timer": f"{stem}_seconds"}[mtype]


# ---------------------------------------------------------------------------------------------------
# map_statsd_name: statsd-exporter semantics
# ---------------------------------------------------------------------------------------------------


def test_glob_star_is_one_whole_component_and_first_match_wins() -> None:
    m = inline(
        """
        mappings:
          - match: a.*.c
            name: first
            labels: {xx: "$1"}
          - match: a.b.c
            name: second
          - match: a.*
            name: two_parts
        """
    )
    assert mc.map_statsd_name("a.b.c", "c", m) == ("first", {"xx": "b"})  # earlier rule shadows a.b.c
    assert mc.map_statsd_name("a.b.x.c", "c", m) is None  # * never spans a dot
    assert mc.map_statsd_name("a.b", "c", m) == ("two_parts", {})
    assert mc.map_statsd_name("a", "c", m) is None
    assert mc.map_statsd_name("a..c", "c", m) == ("first", {"xx": ""})  # an empty component is captured
    assert mc.map_statsd_name("x.a.b.c", "c", m) is None  # globs are anchored


def test_globs_are_tried_before_regex_rules_whatever_the_file_order() -> None:
    m = inline(
        r"""
        mappings:
          - match: '^a\.(.*)$'
            match_type: regex
            name: from_regex
            labels: {rest: "$1"}
          - match: a.*
            name: from_glob
        """
    )
    assert mc.map_statsd_name("a.b", "c", m) == ("from_glob", {})
    assert mc.map_statsd_name("a.b.c", "c", m) == ("from_regex", {"rest": "b.c"})
    # Go's FindStringSubmatchIndex is unanchored: a regex without ^ matches inside the name.
    m2 = inline(
        r"""
        mappings:
          - match: 'operator_failures_(.*)'
            match_type: regex
            name: op
            labels: {operator: "$1"}
        """
    )
    assert mc.map_statsd_name("airflow.operator_failures_Bash", "c", m2) == ("op", {"operator": "Bash"})


def test_match_metric_type_and_type_aliases() -> None:
    m = inline(
        """
        mappings:
          - match: t.*
            match_metric_type: observer
            name: t_seconds
          - match: t.*
            match_metric_type: counter
            name: t_total
          - match: g.*
            match_metric_type: timer   # deprecated alias of observer, still accepted
            name: g_seconds
        """
    )
    for wire in ("ms", "h", "d", "timer", "histogram", "observer"):
        assert mc.map_statsd_name("t.x", wire, m) == ("t_seconds", {})
    assert mc.map_statsd_name("t.x", "c", m) == ("t_total", {})
    assert mc.map_statsd_name("t.x", "g", m) is None
    assert mc.map_statsd_name("g.x", "ms", m) == ("g_seconds", {})
    with pytest.raises(ValueError, match="unknown StatsD metric type"):
        mc.map_statsd_name("t.x", "bogus", m)


def test_template_substitution_follows_the_exporter() -> None:
    m = inline(
        r"""
        mappings:
          - match: p.*.*
            name: p_${1}_total
            labels: {pool: "$2", both: "${1}-$2", bad: "$1_x", out_of_range: "$3"}
          - match: '^r\.(?P<kind>\w+)\.(\w+)$'
            match_type: regex
            name: r_${1}
            labels: {kind: "${kind}", second: "$2", dollar: "$$", glued: "$2x"}
        """
    )
    name, labels = mc.map_statsd_name("p.open_slots.gpu", "g", m)
    assert name == "p_open_slots_total"
    # "$1_x" references a capture named "1_x": the exporter replaces it with "".
    assert labels == {"pool": "gpu", "both": "open_slots-gpu", "bad": "", "out_of_range": ""}
    assert mc.map_statsd_name("r.k.v", "c", m) == (
        "r_k",
        {"kind": "k", "second": "v", "dollar": "$", "glued": ""},
    )
    with pytest.raises(mc.MappingError, match="metric name"):  # named groups only in labels
        inline("mappings:\n  - match: '(?P<a>x)'\n    match_type: regex\n    name: r_${a}\n")


def test_drop_action_fallback_escaping_and_tags() -> None:
    m = inline(
        """
        mappings:
          - match: noisy.*
            name: dropped
            action: drop
          - match: kept.*
            name: kept
            labels: {kk: "$1"}
        """
    )
    assert mc.map_statsd_name("noisy.x", "c", m) is None
    assert mc.map_statsd_name("noisy.x", "c", m, fallback=True) is None  # dropped, not unmapped
    assert mc.map_statsd_name("other.my-metric", "c", m) is None
    assert mc.map_statsd_name("other.my-metric", "c", m, fallback=True) == ("other_my_metric", {})
    assert mc.escape_metric_name("9lives.a--b") == "_9lives_a_b"
    # InfluxDB / Librato tag suffixes are stripped before mapping and become labels.
    assert mc.map_statsd_name("kept.a,env=prod", "c", m) == ("kept", {"env": "prod", "kk": "a"})
    assert mc.map_statsd_name(" kept.a#env=prod ", "c", m) == ("kept", {"env": "prod", "kk": "a"})


def test_parse_statsd_packet_feeds_map_statsd_name(mapping: mc.StatsdMapping) -> None:
    packet = (
        b"airflow.ti.finish.astrid_realtime_inference.infer.success:1|c\n"
        b"airflow.astrid.inference.latency.astrid_realtime_inference:812.5|ms|@0.5\n"
        b"airflow.astrid.run.success_rate.astrid_realtime_inference:0.8|g|#host:w1\n"
        b"\n"
        b"garbage\n"
        b"airflow.astrid.detections.astrid_realtime_inference:3|c:2|c\n"
    )
    samples = mc.parse_statsd_packet(packet)
    assert [(s.name, s.type) for s in samples] == [
        ("airflow.ti.finish.astrid_realtime_inference.infer.success", "c"),
        ("airflow.astrid.inference.latency.astrid_realtime_inference", "ms"),
        ("airflow.astrid.run.success_rate.astrid_realtime_inference", "g"),
        ("airflow.astrid.detections.astrid_realtime_inference", "c"),
        ("airflow.astrid.detections.astrid_realtime_inference", "c"),
    ]
    assert samples[2].tags == {"host": "w1"}
    mapped = [mc.map_statsd_name(s.name, s.type, mapping) for s in samples]
    assert mapped[0] == ("airflow_ti_finish_total", {"dag_id": DAG, "task_id": "infer", "state": "success"})
    assert mapped[1] == ("astrid_inference_latency_seconds", {"dag_id": DAG})
    assert mapped[2] == ("astrid_run_success_rate", {"dag_id": DAG})


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("mappings:\n  - match: a.b*\n    name: x\n", "invalid glob"),
        ("mappings:\n  - match: a.b\n    name: 1bad\n", "metric name"),
        ("mappings:\n  - match: a.b\n    name: x\n    labels: {'a-b': '1'}\n", "invalid label key"),
        ("mappings:\n  - match: a.b\n    name: x\n    labels: {k: '1'}\n", "invalid label key"),  # 2+ chars
        ("mappings:\n  - match: a.b\n    name: x\n    bucket: [1]\n", "unknown keys"),
        ("mappings:\n  - match: a.b\n", "didn't set a metric name"),
        ("mappings:\n  - match: a.b\n    name: x\n    match_metric_type: histogram\n", "match_metric_type"),
        (
            "mappings:\n  - match: a.b\n    name: x\n    observer_type: histogram\n"
            "    summary_options: {quantiles: [{quantile: 0.5, error: 0.01}]}\n",
            "histogram observer and summary options",
        ),
        (
            "mappings:\n  - match: a.b\n    name: x\n    observer_type: histogram\n"
            "    histogram_options: {buckets: [2, 1]}\n",
            "increasing",
        ),
        ("mappings:\n  - match: '(unclosed'\n    match_type: regex\n    name: x\n", "invalid regex"),
        ("mapping: []\n", "'mappings' list"),
    ],
)
def test_invalid_mappings_are_refused(yaml_text: str, message: str) -> None:
    with pytest.raises(mc.MappingError, match=message):
        mc.load_mapping(text=yaml_text)


# ---------------------------------------------------------------------------------------------------
# The project's mapping
# ---------------------------------------------------------------------------------------------------


def test_mapping_file_is_valid_and_uses_histograms(mapping: mc.StatsdMapping) -> None:
    raw = yaml.safe_load(MAPPING.read_text())
    assert set(raw) == {"defaults", "mappings"}
    assert raw["defaults"]["observer_type"] == "histogram"
    assert len(mapping.rules) == len(raw["mappings"]) > 40
    for rule in mapping.rules:
        if rule.action == "map":
            assert rule.name.startswith(("airflow_", "astrid_")), rule.match
        if rule.match_type == "glob":
            assert rule.match.startswith("airflow."), f"{rule.match}: statsd_prefix 'airflow' expected"
        else:
            assert rule.match.startswith(r"^airflow\."), f"{rule.match}: anchor regex rules to the prefix"


def test_no_glob_rule_is_shadowed_by_an_earlier_one(mapping: mc.StatsdMapping) -> None:
    for rule in mapping.rules:
        if rule.match_type != "glob":
            continue
        sample = mc.instantiate(rule.match, "astrid_sample_value")
        kinds = [rule.match_metric_type] if rule.match_metric_type else ["counter", "gauge", "observer"]
        for kind in kinds:
            winner = mapping.winning_rule(sample, kind)
            assert winner is rule, f"{rule.match} ({kind}) is shadowed by {winner.match}"


def test_one_prometheus_name_has_one_type_and_one_label_set(mapping: mc.StatsdMapping) -> None:
    seen: dict[str, tuple[frozenset[str], str, int]] = {}
    for rule in mapping.rules:
        if rule.action != "map" or "$" in rule.name:
            continue
        kind = rule.match_metric_type or "any"
        prom_type = rule.observer_type if kind == "observer" else kind
        key = (frozenset(rule.labels), prom_type, rule.index)
        if rule.name in seen:
            labels, ptype, first = seen[rule.name]
            assert labels == key[0], f"{rule.name}: label sets differ (rules {first} and {rule.index})"
            assert ptype == prom_type, f"{rule.name}: types differ (rules {first} and {rule.index})"
            if prom_type == "histogram":
                assert mapping.rules[first].buckets == rule.buckets, f"{rule.name}: bucket sets differ"
        else:
            seen[rule.name] = key


@pytest.mark.parametrize("base", sorted(METRICS))
def test_every_astrid_metric_maps_with_and_without_dag_id(mapping: mc.StatsdMapping, base: str) -> None:
    mtype = METRICS[base][0]
    want = expected_prom_name(base, mtype)
    per_dag = mapping.resolve(f"airflow.{base}.{DAG}", mtype)
    assert per_dag is not None, f"airflow.{base}.<dag_id> has no mapping rule"
    assert (per_dag.name, per_dag.labels) == (want, {"dag_id": DAG})
    assert per_dag.prom_type in PROM_TYPE_OF[mtype]
    bare = mapping.resolve(f"airflow.{base}", mtype)
    assert bare is not None and (bare.name, bare.labels) == (want, {"dag_id": ""})
    # The default-mapping entry point the UDP-capture test will use gives the same answer.
    assert mc.map_statsd_name(f"airflow.{base}.{DAG}", mtype) == (want, {"dag_id": DAG})
    # Sent with the wrong StatsD type, it must not land in this (typed) metric.
    for other in {"counter", "gauge", "timer"} - {mtype}:
        wrong = mapping.resolve(f"airflow.{base}.{DAG}", other)
        assert wrong is None or wrong.name != want


def test_astrid_timers_are_histograms_with_latency_buckets(mapping: mc.StatsdMapping) -> None:
    for base, (mtype, _) in METRICS.items():
        if mtype != "timer":
            continue
        got = mapping.resolve(f"airflow.{base}.{DAG}", "ms")
        assert got is not None and got.prom_type == "histogram"
        buckets = got.rule.buckets
        assert buckets[0] <= 0.1 and buckets[-1] >= 60, f"{base}: buckets {buckets} miss 0.1 s .. 60 s"
        assert len(buckets) >= 8


def test_airflow_parametrised_names_all_get_labels(mapping: mc.StatsdMapping, airflow_emitted) -> None:
    """Every emitted Airflow name with a variable part (dag_id, task_id, pool…) maps to labels."""
    problems = []
    for m in airflow_emitted:
        if "*" not in m.pattern or m.pattern.startswith("airflow.astrid."):
            continue
        got = mapping.resolve(mc.instantiate(m.pattern, "v"), m.type)
        if got is None or got.rule is None or not got.labels:
            problems.append(f"{m.pattern} ({m.type}, {m.origin}) -> {got and got.name}")
        elif got.prom_type not in PROM_TYPE_OF[m.type]:
            problems.append(f"{m.pattern}: {m.type} mapped as {got.prom_type}")
    assert not problems, "unmapped or unlabelled Airflow metrics:\n" + "\n".join(problems)


def test_dropped_airflow_names_are_twins_of_labelled_names(
    mapping: mc.StatsdMapping, airflow_emitted
) -> None:
    by_origin: dict[str, list[mc.EmittedMetric]] = {}
    for m in airflow_emitted:
        by_origin.setdefault(m.origin.split(":", 1)[1], []).append(m)
    allowed_drops = {"dag_processing.processes"}  # incr/decr counter: negative increments are rejected
    for m in airflow_emitted:
        sample = mc.instantiate(m.pattern, "v")
        if mapping.resolve(sample, m.type) is not None or mapping.resolve(sample, m.type, fallback=True):
            continue  # mapped, or exported under its escaped name
        registry_name = m.origin.split(":", 1)[1]
        if registry_name in allowed_drops:
            continue
        twins = [t for t in by_origin.get(registry_name, []) if t.origin.startswith("registry-legacy:")]
        assert twins, f"{m.pattern} is dropped but has no legacy twin carrying its labels"
        for twin in twins:
            got = mapping.resolve(mc.instantiate(twin.pattern, "v"), twin.type)
            assert got is not None and got.labels, f"{m.pattern} dropped, and its twin {twin.pattern} too"


# ---------------------------------------------------------------------------------------------------
# What Airflow emits: derived, not hand-listed
# ---------------------------------------------------------------------------------------------------


def test_airflow_emitted_names_come_from_the_installed_airflow(airflow_emitted) -> None:
    patterns = {m.pattern for m in airflow_emitted}
    for needed in (
        "airflow.dagrun.duration.success.*",
        "airflow.dagrun.duration.failed.*",
        "airflow.ti.finish.*.*.*",
        "airflow.deadline_alerts.deadline_missed",
        "airflow.scheduler_heartbeat",
        "airflow.pool.open_slots.*",
    ):
        assert needed in patterns
    assert "airflow.local_task_job.task_exit.*.*.*.*" not in patterns  # in the registry, never emitted in 3.3
    assert patterns == mc.airflow_emitted_metric_names()
    without_legacy = mc.airflow_emitted_metric_names(legacy_names_on=False)
    assert "airflow.ti.finish" in without_legacy and "airflow.ti.finish.*.*.*" not in without_legacy


def test_airflow_emitted_metrics_parses_registry_and_source(tmp_path: Path) -> None:
    pkg = tmp_path / "airflow"
    reg = pkg / "_shared" / "observability" / "metrics"
    reg.mkdir(parents=True)
    (reg / "metrics_template.yaml").write_text(
        textwrap.dedent(
            """
            metrics:
              - {name: "thing.done", type: counter, legacy_name: "thing.done.{dag_id}", name_variables: [dag_id]}
              - {name: "never.called", type: gauge, legacy_name: "-", name_variables: []}
              - {name: "{job_name}_start", type: counter, legacy_name: "-", name_variables: [job_name]}
            """
        )
    )
    (pkg / "mod.py").write_text(
        textwrap.dedent(
            """
            from airflow._shared.observability.metrics import stats
            def f(dag_id, self):
                stats.incr("thing.done", tags={"dag_id": dag_id})
                stats.timing(f"custom.{dag_id}.elapsed", 3)
                stats.incr(self.__class__.__name__.lower() + "_start")
                with stats.timer() as t:  # stopwatch, no name
                    pass
            """
        )
    )
    got = {(m.pattern, m.type) for m in mc.airflow_emitted_metrics(prefix="pfx", airflow_dir=pkg)}
    assert got == {
        ("pfx.thing.done", "counter"),
        ("pfx.thing.done.*", "counter"),
        ("pfx.*_start", "counter"),
        ("pfx.custom.*.elapsed", "timer"),
    }


# ---------------------------------------------------------------------------------------------------
# PromQL extraction
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (dag_id, state) (increase(a_total{dag_id=~"$dag_id"}[$__range]))', {"a_total"}),
        (
            "histogram_quantile(0.95, sum without (instance) (rate(lat_seconds_bucket[5m])))",
            {"lat_seconds_bucket"},
        ),
        ("x / on (dag_id) group_left (task_id) y offset 1h", {"x", "y"}),
        ('absent(up{job="statsd-exporter"}) or vector(0) and bool_metric > bool 1', {"up", "bool_metric"}),
        ('{__name__="by_name", job="x"} unless ignoring(le) z', {"by_name", "z"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")  # comment with fake_metric', {"m"}),
        ('label_values(airflow_x_count{dag_id=~"astrid_.*"}, dag_id)', {"airflow_x_count"}),
        ("max_over_time(g[1h:5m]) @ end()", {"g"}),
        ("1e3 * sum(rate(c[5m]))", {"c"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert mc.promql_metric_names(expr) == names


def test_queried_metrics_strips_series_suffixes_of_observers_only(tmp_path: Path) -> None:
    dash = {
        "panels": [
            {"type": "row", "panels": [{"targets": [{"expr": "rate(h_seconds_bucket[5m])"}]}]},
            {"targets": [{"expr": "rate(other_callback_count[5m]) + h_seconds_sum"}]},
        ]
    }
    rules = {
        "groups": [
            {
                "name": "g",
                "rules": [
                    {"record": "job:h:rate", "expr": "rate(h_seconds_count[5m])"},
                    {"alert": "A", "expr": "job:h:rate > 1"},
                ],
            }
        ]
    }
    assert mc.queried_metrics(dash, rules, observed={"h_seconds"}) == {"h_seconds", "other_callback_count"}
    assert mc.queried_metrics(json.dumps(dash), yaml.safe_dump(rules)) == {"h_seconds", "other_callback"}


# ---------------------------------------------------------------------------------------------------
# Dashboard + alerts only read metrics that really exist
# ---------------------------------------------------------------------------------------------------


def produced_metrics(mapping: mc.StatsdMapping, airflow_emitted) -> dict[str, set[str]]:
    """Prometheus name -> {Prometheus types} for everything the real StatsD traffic can produce."""
    sources = [(f"airflow.{b}.{DAG}", t) for b, (t, _) in METRICS.items()]
    sources += [(f"airflow.{b}", t) for b, (t, _) in METRICS.items()]
    sources += [(mc.instantiate(m.pattern, "v"), m.type) for m in airflow_emitted]
    out: dict[str, set[str]] = {}
    for name, mtype in sources:
        got = mapping.resolve(name, mtype, fallback=True)
        if got is not None:
            out.setdefault(got.name, set()).add(got.prom_type)
    return out


def test_every_queried_metric_is_produced_from_a_real_metric(mapping, airflow_emitted) -> None:
    produced = produced_metrics(mapping, airflow_emitted)
    observers = {n for n, types in produced.items() if types & {"histogram", "summary"}}
    queried = mc.queried_metrics(DASHBOARD, ALERTS, observed=observers)
    assert len(queried) >= 20
    missing = sorted(queried - set(produced) - PROMETHEUS_BUILTIN)
    assert not missing, f"queried but never produced by mapping.yml from an emitted metric: {missing}"


def test_bucket_queries_only_on_histograms(mapping, airflow_emitted) -> None:
    produced = produced_metrics(mapping, airflow_emitted)
    exprs = mc.dashboard_expressions(DASHBOARD) + mc.rule_expressions(ALERTS)[0]
    for expr in exprs:
        for name in mc.promql_metric_names(expr):
            if name.endswith("_bucket"):
                assert produced.get(name[: -len("_bucket")]) == {"histogram"}, f"{name}: not a histogram"
        if "histogram_quantile" in expr:
            assert "_bucket" in expr and " le" in expr.replace("(le", "( le"), f"needs _bucket by le: {expr}"


def test_dashboard_covers_every_astrid_metric(mapping) -> None:
    queried = mc.queried_metrics(
        DASHBOARD,
        None,
        observed={expected_prom_name(b, "timer") for b, (t, _) in METRICS.items() if t == "timer"},
    )
    missing = sorted(
        expected_prom_name(b, t) for b, (t, _) in METRICS.items() if expected_prom_name(b, t) not in queried
    )
    assert not missing, f"astrid metrics with no dashboard panel: {missing}"


# ---------------------------------------------------------------------------------------------------
# Prometheus rule file and config
# ---------------------------------------------------------------------------------------------------

DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_alert_rules_have_prometheus_rule_file_shape() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    assert set(doc) == {"groups"} and isinstance(doc["groups"], list) and doc["groups"]
    group_names = [g["name"] for g in doc["groups"]]
    assert len(group_names) == len(set(group_names))
    names = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "labels", "query_offset"}
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule), rule
            if "record" in rule:
                continue
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            assert re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert DURATION.match(str(rule["for"])), f"{rule['alert']}: bad for: {rule['for']!r}"
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
            assert all(isinstance(v, str) and v.strip() for v in rule["annotations"].values())
            names.append(rule["alert"])
    assert len(names) == len(set(names))
    for needed in (
        "AstridDagRunFailed",
        "AstridDeadlineMissed",
        "AstridLowSuccessRate",
        "AstridRealtimeStalled",
        "AstridModelF1BelowThreshold",
    ):
        assert needed in names


def _threshold(alert: str) -> float:
    rule = next(r for r in alert_rules() if r["alert"] == alert)
    return float(re.search(r"<\s*([0-9.]+)\s*$", rule["expr"].strip()).group(1))


def test_alert_thresholds_equal_the_configuration_defaults() -> None:
    cfg = InferenceSchedulingConfig()
    assert _threshold("AstridLowSuccessRate") == cfg.min_success_rate
    assert _threshold("AstridModelF1BelowThreshold") == cfg.min_validation_f1


def _anchors(markdown: str) -> set[str]:
    anchors = set(re.findall(r"<a\s+(?:id|name)=[\"']([^\"']+)[\"']", markdown))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


RUNBOOK_BASE = "{{ $externalLabels.runbook_base_url }}/"  # prometheus.yml's external label: docs/


def test_runbook_urls_point_at_existing_anchors() -> None:
    urls = [r["annotations"]["runbook_url"] for r in alert_rules()]
    checked = 0
    for url in urls:
        assert url.startswith(RUNBOOK_BASE), f"{url}: runbook_url must be built from the base URL label"
        path, _, anchor = ("docs/" + url.removeprefix(RUNBOOK_BASE)).partition("#")
        assert anchor, f"{url}: no anchor"
        doc = REPO / path
        if path == "docs/runbook.md" and not doc.exists():
            continue  # written by the alerts engineer; checked once it exists
        assert doc.exists(), f"{url}: {path} does not exist"
        assert anchor in _anchors(doc.read_text()), f"{url}: no anchor #{anchor} in {path}"
        checked += 1
    if not RUNBOOK.exists():
        pytest.skip(
            f"docs/runbook.md does not exist yet: checked {checked} runbook_url(s) into other docs only"
        )


def test_prometheus_config_scrapes_the_exporter_and_loads_the_rules() -> None:
    cfg = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    targets = [t for sc in jobs["statsd-exporter"]["static_configs"] for t in sc["targets"]]
    assert targets == ["statsd-exporter:9102"]
    assert "prometheus" in jobs
    for rule_file in cfg["rule_files"]:
        assert (PROMETHEUS.parent / rule_file).resolve() == ALERTS.resolve()
    assert DURATION.match(cfg["global"]["scrape_interval"])


def _promtool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip(NO_PROMTOOL)
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, cwd=ALERTS.parent)


def test_promtool_check_rules() -> None:
    proc = _promtool("check", "rules", ALERTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_config() -> None:
    proc = _promtool("check", "config", PROMETHEUS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_alert_unit_tests() -> None:
    proc = _promtool("test", "rules", ALERTS_TEST.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_unit_tests_cover_every_alert() -> None:
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    tested = {c["alertname"] for t in doc["tests"] for c in t.get("alert_rule_test", [])}
    assert tested == {r["alert"] for r in alert_rules()}


# ---------------------------------------------------------------------------------------------------
# Grafana provisioning and dashboard
# ---------------------------------------------------------------------------------------------------


def _datasource_uids() -> dict[str, dict]:
    doc = yaml.safe_load(DATASOURCES.read_text())
    assert doc["apiVersion"] == 1
    return {d["uid"]: d for d in doc["datasources"]}


def test_datasource_provisioning() -> None:
    uids = _datasource_uids()
    prom = [d for d in uids.values() if d["type"] == "prometheus"]
    assert len(prom) == 1 and prom[0]["url"] == "http://prometheus:9090"
    assert prom[0]["access"] == "proxy"


def test_dashboard_provider_points_at_the_dashboards_folder() -> None:
    doc = yaml.safe_load(PROVIDERS.read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].rstrip("/").endswith("dashboards")
    assert list(DASHBOARD.parent.glob("*.json")) == [DASHBOARD]


def _all_panels(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(_all_panels(p.get("panels") or []))
    return out


def test_dashboard_structure_and_datasources() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "astrid-inference" and dash["title"] == "AstrID inference"
    uids = set(_datasource_uids())
    panels = _all_panels(dash["panels"])
    assert len([p for p in panels if p["type"] != "row"]) >= 15
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        if p["type"] == "row":
            assert not p.get("targets"), "rows hold no queries"
            continue
        assert p["datasource"]["uid"] in uids, f"{p['title']}: unknown datasource {p['datasource']}"
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] in uids, p["title"]
            assert t["expr"].strip(), p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["dag_id"]["datasource"]["uid"] in uids
    using_var = [p for p in panels if any("$dag_id" in t.get("expr", "") for t in p.get("targets", []))]
    assert len(using_var) >= 10


def test_dashboard_has_the_requested_panels() -> None:
    dash = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in _all_panels(dash["panels"]))
    for words in (
        "success / failed",
        "failure ratio",
        "success rate",
        "latency p50 / p95",
        "throughput",
        "detections per run",
        "processed / failed / rejected",
        "model load time",
        "rss",
        "gpu memory",
        "deadline misses",
    ):
        assert words in titles, f"no panel for {words!r}"


# ---------------------------------------------------------------------------------------------------
# docs/metrics.md
# ---------------------------------------------------------------------------------------------------


def test_metrics_doc_lists_every_astrid_metric_and_the_setup() -> None:
    doc = METRICS_DOC.read_text()
    for base, (mtype, _) in METRICS.items():
        assert f"`{base}.<dag_id>`" in doc, f"docs/metrics.md misses {base}"
        assert f"`{expected_prom_name(base, mtype)}" in doc, (
            f"docs/metrics.md misses the Prometheus name of {base}"
        )
    for needed in (
        "AIRFLOW__METRICS__STATSD_ON=True",
        "AIRFLOW__METRICS__STATSD_PORT=9125",
        "AIRFLOW__METRICS__STATSD_PREFIX=airflow",
        "AIRFLOW__METRICS__STATSD_HOST",
    ):
        assert needed in doc
