"""Arrival latency: from `astrid ingest` returning to the last detection committed.

    nice -n 10 .venv/bin/python bench/latency.py [--arrivals 20] [--size 2048] [--profiles default,preload]
        [--burst 50 --burst-size 1024 --burst-seconds 60] [--skip-burst] [--skip-fault] [--write]

Everything real: ``airflow standalone`` (api-server, scheduler + LocalExecutor, dag-processor,
triggerer) on SQLite, the local Redis (a database of its own, a channel of its own), the realtime
DAG scheduled on "arrival or cron" (``astrid.airflow.arrival``), the shipped model on CPU.

1. **Trigger poll cost**: the redis provider's ``AwaitMessageTrigger`` (what ``MessageQueueTrigger``
   runs for ``redis+pubsub``) in an event loop of its own for each ``poll_interval``: the CPU it
   burns while idle and how long a published message waits before it is seen.
2. **Latency series**, per settings profile: one ``size``² observation at a time, ``arrivals`` of
   them (after one warm-up arrival, not counted), each through the ``astrid ingest`` CLI; latency =
   the observation's ``inferred_at`` − the moment the CLI returned. Split from the metadata DB:
   message → run created (``dag_run.queued_at``), the gaps between tasks (a task's end → the next
   one's start, the run's creation → the first task), the tasks before ``infer`` (``preflight``,
   ``claim``, ``quality_gate``), ``infer`` up to its loop (task start-up, imports, model resolve +
   load), and the inference itself (the run's ``processing_seconds``).
3. **Burst**: ``burst`` observations of ``burst_size``² arriving evenly over ``burst_seconds``
   (in-process :class:`astrid.ingest.Ingestor`, the code path of the CLI and the API): each must be
   committed within 120 s of its own arrival, none lost, none processed twice; how many runs.
4. **Fault**: the same burst on a stack whose realtime cron runs every minute; the triggerer is
   killed (SIGKILL) a third of the way in. Every observation must still be processed (the cron
   sweeps), none twice.

Profiles: ``default`` is Airflow's defaults (plus the test harness' 2 s scheduler heartbeat);
``preload`` starts the LocalExecutor workers from a forkserver that imported
:mod:`astrid.preload` (torch, Great Expectations, MLflow...) and lets the scheduler idle 0.2 s.
The machine is shared: run it niced, and read the ratios and splits rather than the absolute
seconds; the 1-minute load average is recorded with each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(ROOT / "plugins"), str(ROOT / "bench")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from e2e import TASKS, _ts  # noqa: E402 - one home for the run-splitting helpers

REALTIME = "astrid_realtime_inference"
GOAL_P50_S, GOAL_P95_S, BURST_LIMIT_S = 10.0, 20.0, 120.0
POLL_INTERVALS = (0.05, 0.1, 0.2, 0.5, 1.0, 5.0)
PROFILES: dict[str, dict[str, str]] = {
    "default": {},
    "preload": {
        "AIRFLOW__SCHEDULER__MP_START_METHOD": "forkserver",
        "AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD": "airflow,airflow.executors.local_executor,astrid.preload",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
    },
}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` % of them at or below it."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))], 2)


# ------------------------------------------------------------------------------------ 1. poll cost


def poll_cost(redis_url: str, seconds: float = 20.0, probes: int = 8) -> list[dict[str, float]]:
    """CPU per second of the provider's redis trigger while idle, and the delay before a message
    published at a random moment is seen, for each poll interval (a fresh event loop each)."""
    import random

    import redis

    os.environ["AIRFLOW_CONN_ASTRID_BENCH_EVENTS"] = redis_url
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger

    client = redis.Redis.from_url(redis_url)
    rows = []

    async def measure(interval: float) -> dict[str, float]:
        channel = f"astrid-bench-{uuid.uuid4().hex[:8]}"
        kwargs = {"channels": [channel], "redis_conn_id": "astrid_bench_events", "poll_interval": interval}

        async def one_message() -> float:
            trigger = MessageQueueTrigger(scheme="redis+pubsub", **kwargs)
            task = asyncio.ensure_future(trigger.run().__anext__())
            while client.pubsub_numsub(channel)[0][1] == 0:
                await asyncio.sleep(0.01)
            await asyncio.sleep(random.uniform(0, max(interval, 0.05)))
            sent = time.perf_counter()
            client.publish(channel, "{}")
            await task
            return time.perf_counter() - sent

        trigger = MessageQueueTrigger(scheme="redis+pubsub", **kwargs)
        idle = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.sleep(1.0)  # subscribed and polling
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        idle.cancel()
        delays = [await one_message() for _ in range(probes)]
        return {
            "poll_interval_s": interval,
            "cpu_percent_of_a_core": round(100 * cpu, 2),
            "delay_median_s": round(statistics.median(delays), 3),
            "delay_max_s": round(max(delays), 3),
        }

    baseline_cpu0 = time.process_time()
    time.sleep(seconds / 4)
    baseline = (time.process_time() - baseline_cpu0) / (seconds / 4)
    for interval in POLL_INTERVALS:
        rows.append(asyncio.run(measure(interval)))
        rows[-1]["cpu_percent_of_a_core"] = round(rows[-1]["cpu_percent_of_a_core"] - 100 * baseline, 2)
        print(f"poll {interval}s: {rows[-1]}", flush=True)
    client.close()
    return rows


# ------------------------------------------------------------------------------------ the stack


class Stack:
    """A standalone with arrival events on, its Redis DB, its catalog, its source files."""

    def __init__(self, resources: ExitStack, profile: dict[str, str], cron: str, poll: float) -> None:
        from tests.integration.standalone import RedisDb, cleanup, events_env, make_standalone

        self.redis = RedisDb()
        resources.callback(self.redis.release)
        self.channel = f"astrid-bench-{uuid.uuid4().hex[:8]}"
        env = {
            **profile,
            **events_env(self.redis.url, self.channel, poll),
            "ASTRID_INFERENCE_SCHEDULE_REALTIME": cron,
            "ASTRID_INFERENCE_BATCH_ENABLED": "false",
            "ASTRID_INFERENCE_VALIDATION_ENABLED": "false",
            "ASTRID_INFERENCE_MAX_LOAD_PER_CPU": "1000",  # shared box: the pre-flight must not skip
        }
        self.sa = make_standalone(env)
        resources.callback(cleanup, self.sa)
        self.sources = self.sa.home / "incoming"
        self.sources.mkdir(parents=True)

    def start(self) -> None:
        from astrid.catalog import Catalog
        from astrid.paths import shipped_model_path
        from astrid.registry import ModelRegistry

        # the champion is bootstrapped as in a deployment (not on the first arrival's clock)
        ModelRegistry(
            self.sa.env["MLFLOW_TRACKING_URI"],
            artifact_root=(self.sa.home / "astrid" / "mlartifacts").as_uri(),
        ).ensure_champion(shipped_model_path())
        self.sa.start(timeout=420)
        self.catalog = Catalog(self.sa.env["ASTRID_CATALOG_URL"])
        self.catalog.migrate()
        from tests.integration.standalone import wait_for_listener

        self.sa.api("PATCH", f"/api/v2/dags/{REALTIME}", json={"is_paused": False}).raise_for_status()
        wait_for_listener(self.redis.client, self.channel)

    def write(self, count: int, size: int, seed: int) -> list[dict[str, str]]:
        from astrid.imaging.synthetic import make_observation, write_observation

        return [
            write_observation(make_observation(seed + i, size=size), self.sources, f"o{seed + i}")
            for i in range(count)
        ]

    def ingest_cli(self, files: dict[str, str]) -> tuple[int, float]:
        args = [str(Path(sys.executable).with_name("astrid")), "ingest", "--json"]
        for role in ("science", "reference", "difference"):
            args += [f"--{role}", files[f"{role}_uri"]]
        env = {**self.sa.env, "PYTHONPATH": str(ROOT / "plugins")}
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=True)
        returned = time.time()
        return json.loads(done.stdout)["observation_id"], returned

    def ingestor(self) -> Any:
        from astrid.events import RedisDoorbell
        from astrid.ingest import Ingestor
        from astrid.storage import StorageRoot

        return Ingestor(
            self.catalog,
            StorageRoot.from_uri(self.sa.env["ASTRID_STORAGE_ROOT"]),
            doorbell=RedisDoorbell(self.redis.url, self.channel),
        )

    def wait_inferred(self, ids: list[int], timeout: float) -> dict[int, dict[str, Any]]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            rows = {i: self.catalog.get(i) for i in ids}
            if all(r["status"] in ("inferred", "failed", "rejected") for r in rows.values()):
                return rows
            time.sleep(0.2)
        return {i: self.catalog.get(i) for i in ids}

    def metadata(self, sql: str, *params: Any) -> list[tuple]:
        with sqlite3.connect(self.sa.home / "airflow.db", timeout=30) as conn:
            return conn.execute(sql, params).fetchall()

    def kill_triggerer(self) -> list[int]:
        """SIGKILL the standalone's triggerer and its children (processes this bench started)."""
        import psutil

        killed = []
        for child in psutil.Process(self.sa.proc.pid).children(recursive=True):
            try:
                if "triggerer" in " ".join(child.cmdline()[:3]):
                    for proc in [*child.children(recursive=True), child]:
                        proc.send_signal(signal.SIGKILL)
                        killed.append(proc.pid)
            except psutil.NoSuchProcess:
                continue
        return killed


# ------------------------------------------------------------------------------------ 2. series


def _utc(text: str) -> str:
    """A metadata-DB timestamp (SQLite stores naive UTC) as an aware ISO string."""
    return text if "+" in text[10:] else text + "+00:00"


def series(stack: Stack, arrivals: int, size: int) -> dict[str, Any]:
    files = stack.write(arrivals + 1, size, seed=70000)
    rows = []
    for i, f in enumerate(files):
        oid, returned = stack.ingest_cli(f)
        done = stack.wait_inferred([oid], timeout=300)[oid]
        if done["status"] != "inferred":
            raise RuntimeError(
                f"arrival {i}: observation {oid} is {done['status']}: {done.get('last_error')}"
            )
        _wait_runs_idle(stack)
        if i == 0:
            continue  # warm-up
        rows.append(split_by_row(stack, oid, returned))
        print(f"arrival {i}/{arrivals}: {rows[-1]}", flush=True)
        time.sleep(1.0)
    latencies = [r["latency_s"] for r in rows]
    parts = (
        "message_to_run_s",
        "between_tasks_s",
        "tasks_before_infer_s",
        "quality_gate_s",
        "infer_startup_s",
        "inference_s",
    )
    return {
        "arrivals": len(rows),
        "p50_s": pct(latencies, 50),
        "p95_s": pct(latencies, 95),
        "max_s": max(latencies),
        "median_split": {p: round(statistics.median(r[p] for r in rows), 2) for p in parts},
        "rows": rows,
        "load": load(),
    }


def split_by_row(stack: Stack, oid: int, returned: float) -> dict[str, float]:
    """The split of the run that inferred ``oid`` (its ``claimed_by`` names the run)."""
    row = stack.catalog.get(oid)
    run_id = row["claimed_by"].split(":", 1)[1]
    run = next(r for r in stack.catalog.runs(dag_id=REALTIME) if r["run_id"] == run_id)
    (queued,) = stack.metadata(
        "SELECT queued_at FROM dag_run WHERE dag_id = ? AND run_id = ?", REALTIME, run_id
    )[0]
    tis = {
        task: (_ts(_utc(start)), _ts(_utc(end)))
        for task, start, end in stack.metadata(
            "SELECT task_id, start_date, end_date FROM task_instance WHERE dag_id = ? AND run_id = ?",
            REALTIME,
            run_id,
        )
        if start and end
    }
    committed, created = _ts(row["inferred_at"]), _ts(_utc(queued))
    gaps, previous = 0.0, created
    for task in TASKS[:4]:
        gaps += tis[task][0] - previous
        previous = tis[task][1]
    inference = float(run["processing_seconds"] or 0.0)
    return {
        "latency_s": round(committed - returned, 2),
        "message_to_run_s": round(created - returned, 2),
        "between_tasks_s": round(gaps, 2),
        "tasks_before_infer_s": round(sum(tis[t][1] - tis[t][0] for t in TASKS[:2]), 2),
        "quality_gate_s": round(tis["quality_gate"][1] - tis["quality_gate"][0], 2),
        "infer_startup_s": round(committed - tis["infer"][0] - inference, 2),
        "inference_s": round(inference, 2),
        "run_id": run_id,
    }


def _wait_runs_idle(stack: Stack, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        active = stack.metadata(
            "SELECT count(*) FROM dag_run WHERE dag_id = ? AND state IN ('queued', 'running')", REALTIME
        )[0][0]
        if active == 0:
            return
        time.sleep(0.3)
    raise RuntimeError("realtime runs still active")


# ------------------------------------------------------------------------------------ 3-4. bursts


def burst(
    stack: Stack,
    count: int,
    size: int,
    seconds: float,
    seed: int,
    kill_at: int | None = None,
    wait: float = BURST_LIMIT_S + 180,
) -> dict[str, Any]:
    files = stack.write(count, size, seed=seed)
    ingestor = stack.ingestor()
    from astrid.ingest import IngestRequest

    runs_before = {r[0] for r in stack.metadata("SELECT run_id FROM dag_run WHERE dag_id = ?", REALTIME)}
    arrived: dict[int, float] = {}
    killed: list[int] = []
    began = time.time()
    for i, f in enumerate(files):
        time.sleep(max(0.0, began + i * seconds / count - time.time()))
        if kill_at is not None and i == kill_at:
            killed = stack.kill_triggerer()
            print(f"killed the triggerer (pids {killed}) before arrival {i}", flush=True)
        result = ingestor.ingest(
            IngestRequest(
                science=f["science_uri"], reference=f["reference_uri"], difference=f["difference_uri"]
            )
        )
        arrived[result.observation_id] = time.time()
    rows = stack.wait_inferred(list(arrived), timeout=wait)
    delays = {i: round(_ts(r["inferred_at"]) - arrived[i], 1) for i, r in rows.items() if r["inferred_at"]}
    results = {i: stack.catalog.results(i) for i in arrived}
    runs = [
        r
        for r in stack.metadata("SELECT run_id, run_type FROM dag_run WHERE dag_id = ?", REALTIME)
        if r[0] not in runs_before
    ]
    return {
        "observations": count,
        "size": size,
        "seconds": seconds,
        "inferred": sum(r["status"] == "inferred" for r in rows.values()),
        # refused by the quality gate: processed, by design without detections
        "rejected": sorted(i for i, r in rows.items() if r["status"] == "rejected"),
        "lost": sorted(i for i, r in rows.items() if r["status"] not in ("inferred", "rejected")),
        "twice": sorted(i for i, r in rows.items() if r["attempts"] != 0 or len(results[i]) > 1),
        "within_limit": sum(d <= BURST_LIMIT_S for d in delays.values()),
        "delay_p50_s": pct(list(delays.values()), 50) if delays else None,
        "delay_max_s": max(delays.values()) if delays else None,
        "runs": len(runs),
        "runs_by_type": {t: sum(1 for _, rt in runs if rt == t) for t in sorted({rt for _, rt in runs})},
        "triggerer_killed": bool(killed),
        "load": load(),
    }


# ------------------------------------------------------------------------------------ report


PART_LABELS = {
    "message_to_run_s": "message → run created",
    "between_tasks_s": "between tasks (4 gaps)",
    "tasks_before_infer_s": "`preflight` + `claim`",
    "quality_gate_s": "`quality_gate` task",
    "infer_startup_s": "`infer` start-up (process, imports, model)",
    "inference_s": "inference (read, U-Net, vetting, commit)",
}


def poll_choice(result: dict[str, Any]) -> str:
    """Why the chosen poll interval, in the measured figures."""
    rows = {r["poll_interval_s"]: r for r in result.get("poll_cost") or []}
    chosen, fastest = rows.get(result["poll"]), rows.get(min(rows)) if rows else None
    series = list((result.get("series") or {}).values())
    if not chosen or not fastest:
        return ""
    p50 = min(s["p50_s"] for s in series) if series else None
    share = f", {100 * chosen['delay_median_s'] / p50:.0f} % of the best p50 below" if p50 else ""
    return (
        f"Why {result['poll']} s: a message waits {chosen['delay_median_s']:.2f} s (median; at most "
        f"{chosen['delay_max_s']:.2f} s) before the triggerer sees it{share}, for "
        f"{chosen['cpu_percent_of_a_core']:.2f} % of a core per watcher. Polling every "
        f"{fastest['poll_interval_s']} s would save about "
        f"{chosen['delay_median_s'] - fastest['delay_median_s']:.2f} s of the median for "
        f"{fastest['cpu_percent_of_a_core'] / max(chosen['cpu_percent_of_a_core'], 0.01):.0f}× the CPU; "
        "the provider's 60 s default would add up to a minute to every arrival."
    )


def goal_text(result: dict[str, Any]) -> str:
    """Met or missed, by how much, and where the time went (the measured split)."""

    def versus(value: float, goal: float) -> str:
        return (
            f"goal {goal:.0f} s: met"
            if value <= goal
            else f"goal {goal:.0f} s: missed by {value - goal:.1f} s"
        )

    lines = []
    for name, s in (result.get("series") or {}).items():
        split = s["median_split"]
        biggest = sorted(split, key=split.get, reverse=True)[:3]
        where = ", ".join(f"{PART_LABELS[k]} {split[k]:.1f} s" for k in biggest)
        lines.append(
            f"- `{name}`: p50 {s['p50_s']:.1f} s ({versus(s['p50_s'], GOAL_P50_S)}), p95 {s['p95_s']:.1f} s "
            f"({versus(s['p95_s'], GOAL_P95_S)}), 1-min load {s['load']} at its end. Largest parts "
            f"(medians): {where}."
        )
    for name, b in (result.get("bursts") or {}).items():
        lines.append(
            f"- {name}: {b['within_limit']} of {b['observations']} committed within {BURST_LIMIT_S:.0f} s of "
            f"their arrival (the slowest after {b['delay_max_s']} s), {len(b['lost'])} not processed, "
            f"{len(b['twice'])} twice, {b['runs']} runs, 1-min load {b['load']}."
        )
    if result.get("goal_note"):
        lines.append(f"\n{result['goal_note']}")
    return "\n".join(lines)


def notes(result: dict[str, Any]) -> str:
    """Notes saved with the figures (``notes``, and a phase's ``note``), one paragraph each."""
    items = [
        *(result.get("notes") or []),
        *(b["note"] for b in (result.get("bursts") or {}).values() if b.get("note")),
    ]
    return "".join(f"{n}\n\n" for n in items)


def load_text(result: dict[str, Any]) -> str:
    """The machine's load: before the first phase, per phase (tables), and ``load_samples``
    (``[unix time, 1-min load]`` pairs from a sampler run beside the bench) when given."""
    samples = result.get("load_samples") or []
    if not samples:
        return f"1-min load average {result.get('load_before')} before the first phase."
    loads = sorted(v for _, v in samples)
    first, last = (datetime.fromtimestamp(t, UTC).strftime("%H:%M") for t in (samples[0][0], samples[-1][0]))
    return (
        f"1-min load average {result.get('load_before')} before the first phase; sampled every 20 s "
        f"from {first} to {last} UTC: median {statistics.median(loads):.1f}, range "
        f"{loads[0]:.1f}–{loads[-1]:.1f}, on {os.cpu_count()} cores (other helpers' test suites and "
        f"benchmarks){'; ' + result['load_note'] if result.get('load_note') else ''}."
    )


def settings_text(result: dict[str, Any]) -> str:
    """Which Airflow settings move which part, with the measured difference between profiles."""
    series = result.get("series") or {}
    delta = ""
    if {"default", "preload"} <= set(series):
        d, p = series["default"]["median_split"], series["preload"]["median_split"]
        moved = ", ".join(
            f"{PART_LABELS[k]} {d[k]:.1f} → {p[k]:.1f} s"
            for k in (
                "message_to_run_s",
                "between_tasks_s",
                "tasks_before_infer_s",
                "quality_gate_s",
                "infer_startup_s",
            )
        )
        delta = f" Measured here, `default` → `preload`: {moved}."
    return (
        "- the trigger's poll interval (`ASTRID_INFERENCE_EVENTS_POLL_SECONDS`): message → the asset "
        "event (table above; the provider's 60 s default dominates everything else);\n"
        "- `[scheduler] scheduler_idle_sleep_time` and `scheduler_heartbeat_sec`: how soon the scheduler "
        "turns the queued asset event into a run and a finished task into the next one's start "
        "(message → run created, between tasks);\n"
        "- `[scheduler] mp_start_method=forkserver` with `mp_forkserver_preload` (LocalExecutor): each "
        "task's start-up, the imports of torch, Great Expectations, MLflow (`preflight` + `claim`, "
        f"`quality_gate`, `infer` start-up).{delta}\n"
        "- bursts: `max_active_runs=1` (arrivals during a run fold into the next run), "
        "`ASTRID_INFERENCE_MAX_OBSERVATIONS` (claimed per run), the `gpu` pool, `[core] parallelism`."
    )


def markdown(result: dict[str, Any], command: str) -> str:
    poll = result.get("poll_cost") or []
    poll_rows = "\n".join(
        f"| {r['poll_interval_s']} | {r['cpu_percent_of_a_core']:.2f} | {r['delay_median_s']:.3f} | {r['delay_max_s']:.3f} |"
        for r in poll
    )
    series_rows, split_rows = [], []
    parts = PART_LABELS
    profiles = result.get("series", {})
    for name, s in profiles.items():
        verdict = "meets" if s["p50_s"] <= GOAL_P50_S and s["p95_s"] <= GOAL_P95_S else "misses"
        series_rows.append(
            f"| {name} | {s['arrivals']} | **{s['p50_s']:.1f}** | **{s['p95_s']:.1f}** | {s['max_s']:.1f} | {verdict} | {s['load']} |"
        )
    for key, label in parts.items():
        split_rows.append(
            f"| {label} | " + " | ".join(f"{s['median_split'][key]:.2f}" for s in profiles.values()) + " |"
        )
    header = " | ".join(profiles)
    bursts = []
    for name, b in (result.get("bursts") or {}).items():
        bursts.append(
            f"| {name} | {b['observations']} × {b['size']}² over {b['seconds']:.0f} s | {b['inferred']} | "
            f"{len(b.get('rejected', []))} | {len(b['lost'])} | {len(b['twice'])} | {b['within_limit']}/{b['observations']} | "
            f"{b['delay_p50_s']} / {b['delay_max_s']} | {b['runs']} {b['runs_by_type']} | {b['load']} |"
        )
    return f"""## Arrival latency

From `astrid ingest` returning to the observation's last detection committed, on a real
`airflow standalone` (LocalExecutor, SQLite) with its triggerer and the local Redis: the realtime
DAG scheduled on "arrival or cron" (`AssetOrTimeSchedule`, `MessageQueueTrigger` `redis+pubsub`).
Measured {result["date"]} on this {os.cpu_count()}-core machine, Python {platform.python_version()},
**shared with other engineers' work** (1-min load average per phase in the tables; read ratios and
splits rather than absolute seconds). {load_text(result)}

```bash
{command}
```

### The trigger's poll interval

The redis provider's trigger polls `get_message()` then sleeps `poll_interval` (default 60 s). CPU
it burns while idle (beyond an idle event loop) and how long a message waits before it is seen,
{POLL_INTERVALS} s, one event loop each:

| poll_interval s | CPU, % of one core | delay median s | delay max s |
|---|---|---|---|
{poll_rows}

Chosen: **{result["poll"]} s** (`ASTRID_INFERENCE_EVENTS_POLL_SECONDS`). {poll_choice(result)}

### One {result["size"]}² observation at a time

| profile | arrivals | p50 s | p95 s | max s | goal (p50 ≤ {GOAL_P50_S:.0f} s, p95 ≤ {GOAL_P95_S:.0f} s) | load |
|---|---|---|---|---|---|---|
{chr(10).join(series_rows)}

Median split (s):

| part | {header} |
|---|{"---|" * len(profiles)}
{chr(10).join(split_rows)}

Profiles: `default` is Airflow's defaults; `preload` (what `make up` runs, `scripts/standalone.sh`) sets
`AIRFLOW__SCHEDULER__MP_START_METHOD=forkserver`,
`AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD=airflow,airflow.executors.local_executor,astrid.preload`
(the LocalExecutor's workers start from a process that already imported torch, Great
Expectations, MLflow and astropy, so each task inherits them instead of importing them) and
`AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME=0.2`. Both: the trigger's poll interval above,
the harness' `scheduler_heartbeat_sec=2`. "message → run created" is taken from the moment the
CLI process has exited, so it is slightly negative when the run was created while the CLI was
still shutting down.

The goal:

{goal_text(result)}

Which settings move it:

{settings_text(result)}

### Bursts and a killed triggerer

| phase | arrivals | inferred | rejected by the gate | not processed | twice | within 120 s of arrival | delay p50 / max s | runs | load |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(bursts)}

{notes(result)}"burst": no cron within reach, so only arrival messages and the runs' own follow-up rings (a
full claim with more waiting) start runs. "fault": the realtime cron every minute, the triggerer
SIGKILLed a third of the way through the burst (and not restarted): the cron runs, one claim of
`max_observations` a minute at most, sweep up the rest. "not processed": not inferred when the
bench stopped waiting ({BURST_LIMIT_S + 180:.0f} s after the last arrival for the burst,
{BURST_LIMIT_S + 600:.0f} s for the fault). "twice": an observation with a failed attempt or more
than one result row.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arrivals", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--profiles", default="default,preload")
    parser.add_argument("--poll", type=float, default=0.5, help="the trigger's poll interval for the stacks")
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--burst-size", type=int, default=1024)
    parser.add_argument("--burst-seconds", type=float, default=60.0)
    parser.add_argument("--skip-poll-cost", action="store_true")
    parser.add_argument("--skip-burst", action="store_true")
    parser.add_argument("--skip-fault", action="store_true")
    parser.add_argument(
        "--only-bursts",
        action="store_true",
        help="run the burst and fault phases only (no poll cost, no series)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="figures saved with --json whose poll cost and series this run keeps (with --only-bursts)",
    )
    parser.add_argument(
        "--write", action="store_true", help="write the Arrival latency section of docs/benchmarks.md"
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--render", type=Path, help="only write the doc section from figures saved with --json"
    )
    args = parser.parse_args()
    if args.render:
        from load import write_section

        saved = json.loads(args.render.read_text())
        write_section(markdown(saved, saved["command"]), "## Arrival latency")
        return
    # a SIGTERM unwinds like an error, so the stacks' cleanup (standalone, Redis DB) still runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault(
        "AIRFLOW_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"astrid-latency-{os.getpid()}")
    )
    from tests.integration.standalone import RedisDb

    command = "nice -n 10 .venv/bin/python bench/latency.py " + " ".join(sys.argv[1:])
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "size": args.size,
        "poll": args.poll,
        "command": command,
        "load_before": load(),
    }
    if args.keep:
        kept = json.loads(args.keep.read_text())
        result = {**kept, "command": f"{kept['command']}\n{command}", "poll": args.poll}
        for s in result.get("series", {}).values():  # percentiles again from the kept rows
            latencies = [r["latency_s"] for r in s["rows"]]
            s["p50_s"], s["p95_s"] = pct(latencies, 50), pct(latencies, 95)
    if args.only_bursts:
        _bursts(result, args)
    elif not args.skip_poll_cost:
        db = RedisDb()
        try:
            result["poll_cost"] = poll_cost(db.url)
        finally:
            db.release()
    if not args.only_bursts:
        _series_and_bursts(result, args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if args.write:
        from load import write_section

        write_section(markdown(result, result["command"]), "## Arrival latency")


def _series_and_bursts(result: dict[str, Any], args: argparse.Namespace) -> None:
    result["series"], result["bursts"] = {}, {}
    profiles = [p for p in args.profiles.split(",") if p]
    for name in profiles:
        with ExitStack() as resources:
            stack = Stack(resources, PROFILES[name], cron="0 0 1 1 *", poll=args.poll)
            stack.start()
            result["series"][name] = series(stack, args.arrivals, args.size)
            print(
                f"{name}: {json.dumps({k: v for k, v in result['series'][name].items() if k != 'rows'})}",
                flush=True,
            )
            if not args.skip_burst and name == profiles[-1]:
                result["bursts"]["burst"] = burst(
                    stack, args.burst, args.burst_size, args.burst_seconds, seed=71000
                )
                print(f"burst: {result['bursts']['burst']}", flush=True)
    if not args.skip_fault:
        _fault(result, args, profiles[-1])


def _bursts(result: dict[str, Any], args: argparse.Namespace) -> None:
    """The burst on a fresh stack of the last profile, then the fault phase."""
    profile = [p for p in args.profiles.split(",") if p][-1]
    result["bursts"] = {}
    if not args.skip_burst:
        with ExitStack() as resources:
            stack = Stack(resources, PROFILES[profile], cron="0 0 1 1 *", poll=args.poll)
            stack.start()
            result["bursts"]["burst"] = burst(
                stack, args.burst, args.burst_size, args.burst_seconds, seed=71000
            )
            print(f"burst: {result['bursts']['burst']}", flush=True)
    if not args.skip_fault:
        _fault(result, args, profile)


def _fault(result: dict[str, Any], args: argparse.Namespace, profile: str) -> None:
    """The burst again on a stack whose cron runs every minute, the triggerer killed a third in:
    the cron alone must finish it (one claim of max_observations a minute), so it gets longer."""
    with ExitStack() as resources:
        stack = Stack(resources, PROFILES[profile], cron="* * * * *", poll=args.poll)
        stack.start()
        _wait_runs_idle(stack)
        result["bursts"]["fault"] = burst(
            stack,
            args.burst,
            args.burst_size,
            args.burst_seconds,
            seed=72000,
            kill_at=args.burst // 3,
            wait=BURST_LIMIT_S + 600,
        )
        print(f"fault: {result['bursts']['fault']}", flush=True)


if __name__ == "__main__":
    main()
