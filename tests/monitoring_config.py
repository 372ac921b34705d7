"""Check the monitoring assets (statsd-exporter mapping, Prometheus rules, Grafana dashboard) in Python.

Test tooling (it lives under tests/, not in the runtime package). Pure Python, no Airflow import.
The real ``statsd_exporter`` binary would be the better oracle for the mapping, but Debian 12 (the
machine CI runs on) does not package it and nothing else we may install ships it, so its matcher is
re-implemented here and pinned by ``tests/unit/test_monitoring_config.py``:

* :func:`load_mapping` / :func:`map_statsd_name` re-implement the parts of prom/statsd-exporter's
  mapper that ``include/monitoring/statsd-exporter/mapping.yml`` uses: glob rules (``*`` is one
  whole dot-separated component), ordered "first match wins", glob rules before regex rules,
  ``match_metric_type``, ``$n``/``${n}`` substitution in names and labels, ``action: drop``, and the
  exporter's own config validation (match line, metric name, label name patterns).
* :func:`parse_statsd_packet` splits raw UDP StatsD payloads (what Airflow's ``Stats`` sends) into
  ``(name, type, value)`` so captured traffic can be fed to :func:`map_statsd_name`.
* :func:`queried_metrics` pulls metric names out of the PromQL in a Grafana dashboard and a
  Prometheus rule file.
* :func:`airflow_emitted_metrics` derives the StatsD names the installed Airflow really emits from its
  metrics registry (``metrics_template.yaml``) and the ``stats.incr/gauge/timing/timer`` calls in its
  source, so the checks do not rely on a hand-kept list.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
MONITORING_DIR = REPO_ROOT / "include" / "monitoring"
DEFAULT_MAPPING_PATH = MONITORING_DIR / "statsd-exporter" / "mapping.yml"
DEFAULT_PREFIX = "airflow"

# --------------------------------------------------------------------------------------------------
# statsd-exporter mapping
# --------------------------------------------------------------------------------------------------

# The exporter's own validation patterns (pkg/mapper/mapper.go).
_METRIC_RE = r"[a-zA-Z_]([a-zA-Z0-9_\-])*"
_METRIC_SUB_RE = r"[a-zA-Z0-9_]([a-zA-Z0-9_\-])*"
_TEMPLATE_RE = r"(\$\{?\d+\}?)"
GLOB_MATCH_RE = re.compile(rf"^(\*|{_METRIC_RE})(\.\*|\.{_METRIC_SUB_RE})*$")
METRIC_NAME_RE = re.compile(rf"^([a-zA-Z_]|{_TEMPLATE_RE})([a-zA-Z0-9_]|{_TEMPLATE_RE})*$")
LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]+$")
# The glob formatter's reference pattern (pkg/mapper/fsm/formatter.go): "$1_total" is ONE reference
# to a group named "1_total", which does not exist and so becomes "" -- write "${1}_total".
_GLOB_TEMPLATE_RE = re.compile(r"\$\{?([a-zA-Z0-9_$]+)\}?")
# Go's regexp.Expand syntax for regex rules: $name, ${name}, $$.
_REGEX_TEMPLATE_RE = re.compile(r"\$(\$|\{([a-zA-Z0-9_]+)\}|([a-zA-Z0-9_]+))")

# StatsD wire types and friendly names -> the exporter's three event kinds.
_STATSD_KINDS = {
    "c": "counter",
    "counter": "counter",
    "count": "counter",
    "g": "gauge",
    "gauge": "gauge",
    "ms": "observer",
    "h": "observer",
    "d": "observer",
    "timer": "observer",
    "timing": "observer",
    "histogram": "observer",
    "distribution": "observer",
    "observer": "observer",
}
_MATCH_METRIC_TYPES = {"counter": "counter", "gauge": "gauge", "observer": "observer", "timer": "observer"}
_RULE_KEYS = {
    "match", "name", "labels", "match_type", "match_metric_type", "action", "help", "ttl",
    "observer_type", "timer_type", "histogram_options", "summary_options", "buckets", "quantiles", "scale",
}  # fmt: skip
_DEFAULT_KEYS = {
    "observer_type", "timer_type", "histogram_options", "summary_options", "buckets", "quantiles",
    "match_type", "glob_disable_ordering", "ttl",
}  # fmt: skip
# Prometheus client_golang's DefBuckets: what the exporter uses when no buckets are given.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MappingError(ValueError):
    """The mapping file is something statsd-exporter would refuse (or that we refuse as a typo)."""


def statsd_kind(metric_type: str) -> str:
    """``counter``, ``gauge`` or ``observer`` for a StatsD wire type (``c``, ``ms``…) or a friendly name."""
    kind = _STATSD_KINDS.get(str(metric_type).strip().lower())
    if kind is None:
        raise ValueError(
            f"unknown StatsD metric type {metric_type!r}: expected one of {sorted(_STATSD_KINDS)}"
        )
    return kind


def escape_metric_name(name: str) -> str:
    """statsd-exporter's ``EscapeMetricName``: what an unmapped StatsD name becomes in Prometheus."""
    if not name:
        return ""
    out = ["_"] if name[0].isdigit() else []
    prev = ""
    for ch in name:
        if ch.isascii() and (ch.isalnum() or ch == "_"):
            out.append(ch)
        elif ch == "-" and prev == "-":
            pass  # the exporter collapses "--" into the single "_" written for the first dash
        else:
            out.append("_")
        prev = ch
    return "".join(out)


@dataclass(frozen=True)
class Rule:
    """One ``mappings:`` entry, with the exporter's defaults applied."""

    index: int
    match: str
    name: str
    labels: Mapping[str, str]
    match_type: str  # "glob" | "regex"
    match_metric_type: str | None  # "counter" | "gauge" | "observer" | None (any)
    action: str  # "map" | "drop"
    observer_type: str  # "histogram" | "summary" (only meaningful for observers)
    buckets: tuple[float, ...]
    quantiles: tuple[float, ...]
    pattern: re.Pattern[str] = field(repr=False, compare=False)

    @property
    def captures(self) -> int:
        return self.match.split(".").count("*") if self.match_type == "glob" else self.pattern.groups


@dataclass(frozen=True)
class MappedMetric:
    """What one StatsD event becomes: Prometheus name, labels and Prometheus type."""

    name: str
    labels: dict[str, str]
    prom_type: str  # "counter" | "gauge" | "histogram" | "summary"
    rule: Rule | None  # None: no rule matched (the exporter's escaped default)


@dataclass(frozen=True)
class StatsdMapping:
    rules: tuple[Rule, ...]
    defaults: Mapping[str, Any]
    source: str = "<string>"

    def resolve(self, name: str, metric_type: str, *, fallback: bool = False) -> MappedMetric | None:
        """The exporter's view of one event. ``None`` when dropped, or unmatched without ``fallback``."""
        kind = statsd_kind(metric_type)
        name = name.strip()
        rule, labels, prom_name = self._match(name, kind)
        if rule is None:
            if not fallback:
                return None
            return MappedMetric(escape_metric_name(name), {}, self._prom_type(kind, None), None)
        if rule.action == "drop":
            return None
        # The exporter escapes mapped names too (a "$1" capture may carry dashes).
        return MappedMetric(escape_metric_name(prom_name), labels, self._prom_type(kind, rule), rule)

    def winning_rule(self, name: str, metric_type: str) -> Rule | None:
        """The rule the exporter would apply (drop rules included), or ``None``."""
        return self._match(name.strip(), statsd_kind(metric_type))[0]

    def _prom_type(self, kind: str, rule: Rule | None) -> str:
        if kind != "observer":
            return kind
        if rule is not None:
            return rule.observer_type
        return _observer_type(self.defaults) or "summary"

    def _match(self, name: str, kind: str) -> tuple[Rule | None, dict[str, str], str]:
        # Glob rules (the FSM) are consulted first, in file order; regex rules only afterwards.
        fields_ = name.split(".")
        for rule in self.rules:
            if rule.match_type != "glob" or rule.match_metric_type not in (None, kind):
                continue
            caps = _glob_captures(rule.match, fields_)
            if caps is not None:
                labels = {k: _glob_format(v, caps) for k, v in rule.labels.items()}
                return rule, labels, _glob_format(rule.name, caps)
        for rule in self.rules:
            if rule.match_type != "regex":
                continue
            m = rule.pattern.search(name)  # Go's FindStringSubmatchIndex: unanchored
            if m is None or rule.match_metric_type not in (None, kind):
                continue
            labels = {k: _regex_format(v, m) for k, v in rule.labels.items()}
            return rule, labels, _regex_format(rule.name, m)
        return None, {}, ""


def _glob_captures(match: str, fields_: list[str]) -> list[str] | None:
    parts = match.split(".")
    if len(parts) != len(fields_):
        return None
    caps: list[str] = []
    for part, value in zip(parts, fields_, strict=True):
        if part == "*":
            caps.append(value)
        elif part != value:
            return None
    return caps


def _glob_format(template: str, caps: list[str]) -> str:
    def repl(m: re.Match[str]) -> str:
        ref = m.group(1)
        if ref.isdigit() and 1 <= int(ref) <= len(caps):
            return caps[int(ref) - 1]
        return ""

    return _GLOB_TEMPLATE_RE.sub(repl, template)


def _regex_format(template: str, m: re.Match[str]) -> str:
    def repl(t: re.Match[str]) -> str:
        if t.group(1) == "$":
            return "$"
        ref = t.group(2) or t.group(3)
        try:
            value = m.group(int(ref)) if ref.isdigit() else m.group(ref)
        except IndexError:  # no such group: Go expands it to ""
            return ""
        return value or ""

    return _REGEX_TEMPLATE_RE.sub(repl, template)


def _observer_type(conf: Mapping[str, Any]) -> str | None:
    return conf.get("observer_type") or conf.get("timer_type") or None


def _floats(values: Any, what: str, where: str) -> tuple[float, ...]:
    if not isinstance(values, list) or not values:
        raise MappingError(f"{where}: {what} must be a non-empty list of numbers")
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise MappingError(f"{where}: {what} must be a list of numbers, got {values!r}") from None
    if list(out) != sorted(set(out)):
        raise MappingError(f"{where}: {what} must be strictly increasing, got {values!r}")
    return out


def _parse_defaults(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise MappingError("defaults: must be a mapping")
    unknown = set(raw) - _DEFAULT_KEYS
    if unknown:
        raise MappingError(f"defaults: unknown keys {sorted(unknown)}")
    ot = _observer_type(raw)
    if ot not in (None, "histogram", "summary"):
        raise MappingError(f"defaults: observer_type must be histogram or summary, got {ot!r}")
    if raw.get("match_type", "glob") not in ("glob", "regex"):
        raise MappingError(f"defaults: match_type must be glob or regex, got {raw['match_type']!r}")
    return dict(raw)


def _parse_rule(i: int, raw: Any, defaults: Mapping[str, Any]) -> Rule:
    where = f"mappings[{i}]"
    if not isinstance(raw, dict):
        raise MappingError(f"{where}: must be a mapping")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise MappingError(f"{where}: unknown keys {sorted(unknown)} (typo?)")
    match, name = raw.get("match"), raw.get("name")
    if not isinstance(match, str) or not match:
        raise MappingError(f"{where}: 'match' is required")
    where = f"{where} ({match})"
    if not isinstance(name, str) or not name:
        raise MappingError(f"{where}: metric mapping didn't set a metric name")
    if not METRIC_NAME_RE.match(name):
        raise MappingError(f"{where}: metric name {name!r} doesn't match {METRIC_NAME_RE.pattern}")
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict):
        raise MappingError(f"{where}: labels must be a mapping")
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_NAME_RE.match(key):
            raise MappingError(f"{where}: invalid label key {key!r}")
        if not isinstance(value, str):
            raise MappingError(f"{where}: label {key!r} value must be a string, got {value!r}")
    match_type = raw.get("match_type") or defaults.get("match_type") or "glob"
    if match_type == "glob":
        if not GLOB_MATCH_RE.match(match):
            raise MappingError(f"{where}: invalid glob match (each component is a name or a whole '*')")
        pattern = re.compile("^" + re.escape(match).replace(r"\*", "([^.]*)") + "$")
    elif match_type == "regex":
        try:
            pattern = re.compile(match)
        except re.error as exc:
            raise MappingError(f"{where}: invalid regex: {exc}") from None
    else:
        raise MappingError(f"{where}: match_type must be glob or regex, got {match_type!r}")
    mmt = raw.get("match_metric_type")
    if mmt is not None and mmt not in _MATCH_METRIC_TYPES:
        raise MappingError(f"{where}: invalid match_metric_type {mmt!r} (counter, gauge or observer)")
    action = raw.get("action") or "map"
    if action not in ("map", "drop"):
        raise MappingError(f"{where}: action must be map or drop, got {action!r}")
    observer_type = _observer_type(raw) or _observer_type(defaults) or "summary"
    if observer_type not in ("histogram", "summary"):
        raise MappingError(f"{where}: observer_type must be histogram or summary, got {observer_type!r}")
    hist, summ = raw.get("histogram_options"), raw.get("summary_options")
    if observer_type == "histogram" and summ is not None:
        raise MappingError(f"{where}: cannot use histogram observer and summary options at the same time")
    if observer_type == "summary" and hist is not None:
        raise MappingError(f"{where}: cannot use summary observer and histogram options at the same time")
    buckets = DEFAULT_BUCKETS
    dflt_hist = defaults.get("histogram_options") or {}
    if (hist or {}).get("buckets") is not None:
        buckets = _floats(hist["buckets"], "histogram_options.buckets", where)
    elif raw.get("buckets") is not None:
        buckets = _floats(raw["buckets"], "buckets", where)
    elif dflt_hist.get("buckets") is not None:
        buckets = _floats(dflt_hist["buckets"], "defaults.histogram_options.buckets", "defaults")
    elif defaults.get("buckets") is not None:
        buckets = _floats(defaults["buckets"], "defaults.buckets", "defaults")
    qsrc = (
        (summ or {}).get("quantiles")
        or raw.get("quantiles")
        or (defaults.get("summary_options") or {}).get("quantiles")
    )
    quantiles = tuple(float(q["quantile"]) for q in qsrc) if qsrc else (0.5, 0.9, 0.99)
    if any(not 0 < q < 1 for q in quantiles):
        raise MappingError(f"{where}: quantiles must lie strictly between 0 and 1")
    return Rule(
        index=i,
        match=match,
        name=name,
        labels=dict(labels),
        match_type=match_type,
        match_metric_type=_MATCH_METRIC_TYPES[mmt] if mmt else None,
        action=action,
        observer_type=observer_type,
        buckets=buckets,
        quantiles=quantiles,
        pattern=pattern,
    )


def load_mapping(path: str | Path | None = None, *, text: str | None = None) -> StatsdMapping:
    """Parse and validate a statsd-exporter mapping file (``path``, or YAML ``text``)."""
    source = "<string>"
    if text is None:
        p = Path(path) if path is not None else DEFAULT_MAPPING_PATH
        text, source = p.read_text(), str(p)
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("mappings"), list):
        raise MappingError(f"{source}: top level must be a mapping with a 'mappings' list")
    unknown = set(doc) - {"defaults", "mappings"}
    if unknown:
        raise MappingError(f"{source}: unknown top-level keys {sorted(unknown)}")
    defaults = _parse_defaults(doc.get("defaults"))
    rules = tuple(_parse_rule(i, raw, defaults) for i, raw in enumerate(doc["mappings"]))
    return StatsdMapping(rules=rules, defaults=defaults, source=source)


@functools.lru_cache(maxsize=4)
def _default_mapping(path: str) -> StatsdMapping:
    return load_mapping(path)


def map_statsd_name(
    name: str, metric_type: str, mapping: StatsdMapping | None = None, *, fallback: bool = False
) -> tuple[str, dict[str, str]] | None:
    """``(prometheus_name, labels)`` for a StatsD name as it arrives (prefix included), or ``None``.

    ``metric_type`` is a StatsD wire type (``c``, ``g``, ``ms``, ``h``, ``d``) or ``counter``/``gauge``/
    ``timer``/``observer``. ``None`` means a drop rule matched or, without ``fallback``, no rule did;
    with ``fallback=True`` an unmatched name comes back as the exporter would export it (escaped, no
    labels). Tag suffixes in the name (InfluxDB ``,k=v``, Librato ``#k=v``) are removed first, as the
    exporter's line parser does before mapping.
    """
    mapping = mapping if mapping is not None else _default_mapping(str(DEFAULT_MAPPING_PATH))
    bare, tags = _split_name_tags(name)
    result = mapping.resolve(bare, metric_type, fallback=fallback)
    if result is None:
        return None
    return result.name, {**tags, **result.labels}


# --------------------------------------------------------------------------------------------------
# Raw StatsD traffic
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatsdSample:
    name: str
    type: str  # wire type: c, g, ms, h, d, s
    value: str
    tags: dict[str, str]


def _split_name_tags(name: str) -> tuple[str, dict[str, str]]:
    name = name.strip()
    tags: dict[str, str] = {}
    for sep, kv in (("#", "="), (",", "=")):  # Librato, then InfluxDB
        if sep in name:
            name, _, rest = name.partition(sep)
            for part in rest.split(","):
                k, _, v = part.partition(kv)
                if k:
                    tags[k.strip()] = v.strip()
    return name, tags


def parse_statsd_packet(payload: bytes | str) -> list[StatsdSample]:
    """Split one UDP payload (newline-separated lines, ``name:value|type[|@rate][|#tags]``) into samples.

    Lines that are not StatsD (empty, no ``:`` or ``|``) are skipped; multi-value lines
    (``name:1|c:2|c``) yield one sample each.
    """
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    samples: list[StatsdSample] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or ":" not in line or "|" not in line:
            continue
        raw_name, _, rest = line.partition(":")
        name, tags = _split_name_tags(raw_name)
        # Like the exporter's line parser: DogStatsD tags ("|#k:v") disable multi-value lines.
        chunks = [rest] if "|#" in rest else rest.split(":")
        for chunk in chunks:
            parts = chunk.split("|")
            if len(parts) < 2:
                continue
            value, mtype = parts[0], parts[1].strip()
            for extra in parts[2:]:
                if extra.startswith("#"):  # DogStatsD tags
                    for tag in extra[1:].split(","):
                        k, _, v = tag.partition(":")
                        if k:
                            tags[k] = v
            samples.append(StatsdSample(name=name, type=mtype, value=value, tags=dict(tags)))
    return samples


# --------------------------------------------------------------------------------------------------
# PromQL: which metrics do the dashboard and the rules read?
# --------------------------------------------------------------------------------------------------

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan", "start", "end", "atan2",
}  # fmt: skip
_SERIES_SUFFIXES = ("_bucket", "_sum", "_count")
_IDENT_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _load(obj: Any, loader: Any) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Path):
        return loader(obj.read_text())
    if isinstance(obj, str):
        try:
            is_file = "\n" not in obj and not obj.lstrip().startswith(("{", "[")) and Path(obj).is_file()
        except OSError:  # e.g. a long one-line document: "file name too long"
            is_file = False
        return loader(Path(obj).read_text() if is_file else obj)
    return obj


def dashboard_expressions(dashboard: Any) -> list[str]:
    """Every PromQL string of a Grafana dashboard: panel targets (nested rows too) and query variables."""
    dash = _load(dashboard, json.loads)
    if dash is None:
        return []
    dash = dash.get("dashboard", dash)  # accept the API's {"dashboard": {...}} envelope
    exprs: list[str] = []

    def walk(panels: Iterable[Any]) -> None:
        for panel in panels or []:
            for target in panel.get("targets") or []:
                if isinstance(target, dict) and target.get("expr"):
                    exprs.append(str(target["expr"]))
            walk(panel.get("panels") or [])

    walk(dash.get("panels") or [])
    for var in (dash.get("templating") or {}).get("list") or []:
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if query:
            exprs.append(str(query))
    return exprs


def rule_expressions(rules: Any) -> tuple[list[str], set[str]]:
    """(every ``expr`` of a Prometheus rule file, the names defined by its ``record:`` rules)."""
    doc = _load(rules, yaml.safe_load)
    exprs: list[str] = []
    recorded: set[str] = set()
    for group in (doc or {}).get("groups") or []:
        for rule in group.get("rules") or []:
            if rule.get("expr") is not None:
                exprs.append(str(rule["expr"]))
            if rule.get("record"):
                recorded.add(str(rule["record"]))
    return exprs, recorded


def promql_metric_names(expr: str) -> set[str]:
    """Metric names selected by one PromQL expression (suffixes such as ``_bucket`` kept as written).

    Grafana's ``label_values(metric, label)`` / ``query_result(expr)`` variable queries are understood.
    """
    text = re.sub(r"#[^\n]*", " ", expr).strip()
    # Grafana variable queries: label_values([selector,] label) -- the last argument is a label name.
    grafana = re.match(r"^label_values\s*\((.*?)(?:,)?\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$", text, re.S)
    if grafana:
        text = grafana.group(1)
    elif re.match(r"^(label_names|metrics)\s*\(", text):
        return set()
    else:
        qr = re.match(r"^query_result\s*\((.*)\)$", text, re.S)
        text = qr.group(1) if qr else text
    names: set[str] = set()
    # {__name__="x"} selectors name the metric inside the braces.
    names.update(re.findall(r"__name__\s*=\s*[\"']([a-zA-Z_:][a-zA-Z0-9_:]*)[\"']", text))
    text = re.sub(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`", " ", text)  # string literals
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\$\{[^}]*\}|\$[a-zA-Z_][a-zA-Z0-9_]*", " ", text)  # Grafana variables
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text, flags=re.IGNORECASE
    )
    text = re.sub(r"\b(offset)\s+-?[0-9a-zA-Z]+", " ", text)
    text = re.sub(r"@\s*[\w.()]+", " ", text)
    text = re.sub(r"\b\d+(\.\d+)?([eE][+-]?\d+)?[a-zA-Z]*\b", " ", text)  # numbers, durations
    for m in _IDENT_RE.finditer(text):
        ident = m.group(0)
        if ident.lower() in PROMQL_KEYWORDS:
            continue
        if re.match(r"\s*\(", text[m.end() :]):
            continue  # a function or aggregation call (label_values included)
        names.add(ident)
    return names


def queried_metrics(
    dashboard: Any = None,
    rules: Any = None,
    *,
    observed: Iterable[str] | None = None,
) -> set[str]:
    """Base metric names read by a Grafana dashboard and/or a Prometheus rule file.

    Each argument is a path, JSON/YAML text or an already-parsed object. ``_bucket``/``_sum``/``_count``
    are stripped to the histogram/summary base name; pass ``observed`` (the names that really are
    histograms/summaries) to strip only those, so a counter genuinely called ``…_count`` survives.
    Names produced by the rule file's own recording rules are left out.
    """
    exprs = dashboard_expressions(dashboard)
    rule_exprs, recorded = rule_expressions(rules)
    exprs += rule_exprs
    observed_set = set(observed) if observed is not None else None
    out: set[str] = set()
    for expr in exprs:
        for name in promql_metric_names(expr):
            out.add(_strip_series_suffix(name, observed_set))
    return out - recorded


def _strip_series_suffix(name: str, observed: set[str] | None) -> str:
    for suffix in _SERIES_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if observed is None or base in observed:
                return base
    return name


# --------------------------------------------------------------------------------------------------
# What Airflow really emits
# --------------------------------------------------------------------------------------------------

_STATS_CALL_RE = re.compile(r"\b[sS]tats\.(incr|decr|gauge|timing|timer)\(")
_METHOD_TYPES = {"incr": "counter", "decr": "counter", "gauge": "gauge", "timing": "timer", "timer": "timer"}
_REGISTRY_RELATIVE = (
    Path("_shared/observability/metrics/metrics_template.yaml"),
    Path("sdk/_shared/observability/metrics/metrics_template.yaml"),
)


@dataclass(frozen=True)
class EmittedMetric:
    """A StatsD name pattern Airflow emits (``*`` = one dot-free component, e.g. a dag_id)."""

    pattern: str  # without the statsd prefix
    type: str  # counter | gauge | timer
    origin: str  # "registry:name", "registry:legacy_name" or "source:<file>:<line>"


def airflow_package_dir() -> Path | None:
    """Where the installed ``airflow`` package lives, found without importing it."""
    spec = importlib.util.find_spec("airflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _expr_pattern(node: ast.AST) -> str | None:
    """A call's stat-name argument as a pattern: literals kept, anything computed becomes ``*``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        out = []
        for part in node.values:
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                out.append(part.value)
            else:
                out.append("*")
        return "".join(out)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _expr_pattern(node.left), _expr_pattern(node.right)
        return (left or "*") + (right or "*")
    return None


def _call_sites(root: Path) -> Iterator[tuple[str, str, str]]:
    """(pattern, method, "file:line") for every ``stats.<method>(name, …)`` call in Airflow's source."""
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if "/tests/" in f"/{rel}" or "example_dags" in rel:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not _STATS_CALL_RE.search(text):
            continue
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            if not (isinstance(owner, ast.Name) and owner.id in ("stats", "Stats")):
                continue
            if node.func.attr not in _METHOD_TYPES:
                continue
            arg = (
                node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "stat"), None)
            )
            pattern = _expr_pattern(arg) if arg is not None else None
            if pattern and pattern.strip("*"):
                yield pattern, node.func.attr, f"{rel}:{node.lineno}"


def _string_constants(root: Path) -> set[str]:
    """Every string literal in Airflow's source that looks like a stat name (for names built indirectly)."""
    found: set[str] = set()
    lit = re.compile(r"[\"']([a-z_][a-z0-9_.\-]*)[\"']")
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if "/tests/" in f"/{rel}":
            continue
        try:
            found.update(lit.findall(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    return found


def _template_to_pattern(template: str) -> str:
    return re.sub(r"\{[^{}]+\}", "*", template)


def _wild_match(pattern: str, name: str) -> bool:
    """``*`` in a source pattern stands for any text (an f-string value may hold dots)."""
    regex = "^" + ".*".join(re.escape(p) for p in pattern.split("*")) + "$"
    return re.match(regex, name) is not None


@functools.lru_cache(maxsize=4)
def _airflow_emitted(root_str: str, legacy_names_on: bool) -> tuple[EmittedMetric, ...]:
    root = Path(root_str)
    registry_file = next((root / rel for rel in _REGISTRY_RELATIVE if (root / rel).is_file()), None)
    if registry_file is None:
        raise FileNotFoundError(f"no metrics_template.yaml under {root}: is this Airflow 3.x?")
    registry = yaml.safe_load(registry_file.read_text())["metrics"]
    calls = list(_call_sites(root))
    constants: set[str] | None = None
    out: dict[str, EmittedMetric] = {}

    def add(pattern: str, mtype: str, origin: str) -> None:
        out.setdefault(pattern, EmittedMetric(pattern, mtype, origin))

    for entry in registry:
        name, mtype = str(entry["name"]), str(entry["type"]).lower()
        name_pattern = _template_to_pattern(name)
        # Emitted if a call site produces this name, or (for names built indirectly, e.g. executor
        # slots or "<job>_start") if the literal appears in the source at all.
        used = any(_wild_match(p, name_pattern) or _wild_match(name_pattern, p) for p, _, _ in calls)
        if not used:
            if constants is None:
                constants = _string_constants(root)
            suffix = name_pattern.rsplit("*", 1)[-1]
            used = name_pattern in constants or (
                "*" in name_pattern and any(c.endswith(suffix) for c in constants if suffix)
            )
        if not used:
            continue
        add(name_pattern, mtype, f"registry:{name}")
        legacy = str(entry.get("legacy_name", "-"))
        if legacy_names_on and legacy != "-":
            add(_template_to_pattern(legacy), mtype, f"registry-legacy:{name}")
    # Call sites whose names are not in the registry are emitted verbatim.
    for pattern, method, where in calls:
        registered = any(
            _wild_match(pattern, _template_to_pattern(str(e["name"])))
            or _wild_match(_template_to_pattern(str(e["name"])), pattern)
            for e in registry
        )
        if not registered:
            add(pattern, _METHOD_TYPES[method], f"source:{where}")
    return tuple(sorted(out.values(), key=lambda m: m.pattern))


def airflow_emitted_metrics(
    *, prefix: str = DEFAULT_PREFIX, legacy_names_on: bool = True, airflow_dir: Path | None = None
) -> list[EmittedMetric]:
    """StatsD name patterns the installed Airflow emits, with ``prefix.`` in front.

    Derived from Airflow's metrics registry (``metrics_template.yaml``: each metric's ``name`` and,
    with ``[metrics] legacy_names_on`` (default True), its ``legacy_name``), keeping only the
    registry entries that the source really emits, plus ``stats.*`` calls in the source whose names
    are not in the registry. Template fields (``{dag_id}``) become ``*``.
    """
    root = airflow_dir or airflow_package_dir()
    if root is None:
        raise ModuleNotFoundError("apache-airflow is not installed")
    pre = f"{prefix}." if prefix else ""
    return [
        EmittedMetric(pre + m.pattern, m.type, m.origin)
        for m in _airflow_emitted(str(root.resolve()), legacy_names_on)
    ]


def airflow_emitted_metric_names(*, prefix: str = DEFAULT_PREFIX, legacy_names_on: bool = True) -> set[str]:
    """The patterns of :func:`airflow_emitted_metrics` (e.g. ``airflow.dagrun.duration.failed.*``)."""
    return {m.pattern for m in airflow_emitted_metrics(prefix=prefix, legacy_names_on=legacy_names_on)}


def instantiate(pattern: str, value: str = "x") -> str:
    """A concrete StatsD name for a pattern (every ``*`` replaced by ``value``)."""
    return pattern.replace("*", value)
