# Sourced by scripts/standalone.sh (`make up`), with the venv's python first on PATH and plugins/ on
# PYTHONPATH: choose between runs on arrival and cron only, before Airflow starts.
#
# When the events queue answers (`python -m astrid.events --check`: events on and Redis/SQS at
# ASTRID_INFERENCE_EVENTS_URL replies), the triggerer gets the astrid_events connection from the
# same URL the publishers use. Otherwise the reason is printed, then a NOTICE, and
# ASTRID_INFERENCE_EVENTS_ENABLED=false is exported for every Airflow process: the realtime DAG is
# scheduled on its cron alone and no watcher is declared that could only fail in the triggerer.
# tests/unit/test_arrival_events_script.py sources it against the real local Redis and a dead port.
if python -m astrid.events --check; then
  if [ -z "${AIRFLOW_CONN_ASTRID_EVENTS:-}" ]; then
    AIRFLOW_CONN_ASTRID_EVENTS="$(python -c 'from astrid.config import load_config; print(load_config().events_url)')"
    export AIRFLOW_CONN_ASTRID_EVENTS
  fi
else
  echo "AstrID: NOTICE: arrival events are off for this run (why: the line above), so the realtime" \
       "DAG runs on its cron only. For runs on arrival: start Redis, or fix ASTRID_INFERENCE_EVENTS_URL," \
       "and run make up again." >&2
  export ASTRID_INFERENCE_EVENTS_ENABLED=false
fi
