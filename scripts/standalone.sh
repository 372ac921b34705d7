#!/usr/bin/env bash
# `make up`: airflow standalone (api-server + scheduler/LocalExecutor + dag-processor + triggerer)
# on this project, SQLite under .airflow/. Prints the UI URL and the admin password.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$PWD/.airflow}"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_FOLDER="$PWD/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$PWD/plugins"
export PYTHONPATH="$PWD/plugins${PYTHONPATH:+:$PYTHONPATH}"
PORT="${AIRFLOW__API__PORT:-8080}"
export AIRFLOW__API__PORT="$PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://localhost:$PORT/execution/"
# Tasks start from a forkserver that already imported torch, Great Expectations and MLflow
# (astrid.preload), and the scheduler idles 0.2 s: the `preload` profile of bench/latency.py, which
# halved the arrival latency here (docs/benchmarks.md, "Arrival latency"). Set them to override.
export AIRFLOW__SCHEDULER__MP_START_METHOD="${AIRFLOW__SCHEDULER__MP_START_METHOD:-forkserver}"
export AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD="${AIRFLOW__SCHEDULER__MP_FORKSERVER_PRELOAD:-airflow,airflow.executors.local_executor,astrid.preload}"
export AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME="${AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME:-0.2}"
# Arrivals: on each "observation arrived" message when the events queue answers, else cron only
# with a logged notice (scripts/arrival-events.sh).
. scripts/arrival-events.sh
airflow db migrate >/dev/null
airflow pools set gpu 2 "U-Net tasks (GPU slots)" >/dev/null
(
  for _ in $(seq 1 120); do
    if [ -f "$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated" ] && \
       curl -fsS "http://localhost:$PORT/api/v2/monitor/health" >/dev/null 2>&1; then
      echo
      echo "AstrID Airflow UI: http://localhost:$PORT  user: admin  password: $(python3 -c \
        "import json,sys; print(json.load(open(sys.argv[1]))['admin'])" \
        "$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated")"
      echo "Seed observations with: make seed, or register your own: astrid ingest --help (in another terminal)"
      # the realtime DAG runs on arrivals only when unpaused (new DAGs start paused)
      for _ in $(seq 1 60); do
        if airflow dags unpause astrid_realtime_inference >/dev/null 2>&1; then
          echo "astrid_realtime_inference unpaused: it runs on each arrival and on its cron"
          break
        fi
        sleep 2
      done
      break
    fi
    sleep 2
  done
) &
exec airflow standalone
