#!/bin/sh
# AstrID startup script for Amazon MWAA (Airflow 3.3.1, Python 3.12).
#
# MWAA runs this in every container (webserver, scheduler, worker, hybrid) before Airflow starts,
# with a 5-minute limit, and keeps the variables it exports for the Airflow processes. It is
# sourced by MWAA's wrapper: no `exit`, no `set -e`. Protected names (AIRFLOW_HOME, PYTHONPATH,
# AIRFLOW__API__BASE_URL, MWAA__*) cannot be changed here.
#
# Our choice on MWAA: its workers run on Fargate and have no GPU, so the U-Net runs on CPU there
# (ASTRID_INFERENCE_DEVICE=cpu, small batches, a few threads per task). GPU-scale backfills belong on
# the compose/Astro GPU worker queue instead; see docs/deploy.md.

: "${AIRFLOW_HOME:=/usr/local/airflow}"

# --- every component ------------------------------------------------------------------------
# DAG files read these at parse time (scheduler/dag-processor) and tasks read them at run time, so
# they must agree everywhere.
export ASTRID_INFERENCE_DEVICE="cpu"
export ASTRID_INFERENCE_BATCH_SIZE="${ASTRID_INFERENCE_BATCH_SIZE:-2}"
# MWAA's Celery workers consume only the `default` queue: there is no `gpu` queue to route to.
export ASTRID_INFERENCE_GPU_QUEUE="default"
export ASTRID_INFERENCE_GPU_POOL="${ASTRID_INFERENCE_GPU_POOL:-gpu}"
# The maintenance DAG cleans the metadata DB through MWAA's CLI endpoint (tasks have no metadata DB
# on MWAA): name this environment, and allow the execution role airflow:CreateCliToken on it.
# Empty: its db_clean task is skipped with a message saying so (docs/deploy.md, "Metadata clean-up").
export ASTRID_INFERENCE_MWAA_ENVIRONMENT="${ASTRID_INFERENCE_MWAA_ENVIRONMENT:-}"

# plugins.zip is unpacked to $AIRFLOW_HOME/plugins and carries astrid/ plus include/ (model weights,
# expectation suite). The package looks for include/ next to plugins/, so point it there.
export ASTRID_MODEL_PATH="${AIRFLOW_HOME}/plugins/include/models/astrid-unet"
if [ ! -e "${AIRFLOW_HOME}/include" ]; then
  ln -s "${AIRFLOW_HOME}/plugins/include" "${AIRFLOW_HOME}/include" 2>/dev/null \
    || echo "astrid startup: could not link ${AIRFLOW_HOME}/include (read-only home?)"
fi

# Arrivals (docs/deploy.md, "Arrivals on MWAA"): runs on arrival need an SQS queue. Put its URL on
# the line below (uncommented). Left unset, the realtime DAG runs on its cron only: MWAA has no
# Redis of ours, and the default redis:// URL would give the triggerer a watcher that only fails.
# export ASTRID_INFERENCE_EVENTS_URL="https://sqs.<region>.amazonaws.com/<account>/astrid-arrivals"
if [ -z "${ASTRID_INFERENCE_EVENTS_URL:-}" ]; then
  export ASTRID_INFERENCE_EVENTS_ENABLED="false"
fi

export GX_ANALYTICS_ENABLED="False"
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"

# --- per component --------------------------------------------------------------------------
# MWAA sets MWAA_AIRFLOW_COMPONENT to webserver, scheduler, worker or hybrid (a container that runs
# the scheduler and a worker together, on small environments). It never sends "api-server", even on
# Airflow 3. A hybrid container needs both the worker's thread caps and the scheduler's pool.
astrid_worker_settings() {
  # CPU inference: cap the threads each task's torch/BLAS uses so concurrent tasks on one
  # worker do not oversubscribe its vCPUs (the `gpu` pool caps how many U-Net tasks run at once).
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
  export MKL_NUM_THREADS="${MKL_NUM_THREADS:-2}"
}

astrid_ensure_gpu_pool() {
  # The U-Net tasks ask for the `gpu` pool; without it they are never scheduled. Idempotent and
  # best effort: a failure is reported in the startup log and Airflow still starts.
  if ! command -v airflow >/dev/null 2>&1; then
    echo "astrid startup: airflow CLI not found; create pool ${ASTRID_INFERENCE_GPU_POOL} in the UI"
    return 0
  fi
  if timeout 90 airflow pools get "${ASTRID_INFERENCE_GPU_POOL}" >/dev/null 2>&1; then
    return 0
  fi
  if timeout 90 airflow pools set "${ASTRID_INFERENCE_GPU_POOL}" "${GPU_POOL_SLOTS:-2}" \
      "AstrID U-Net tasks (CPU on MWAA)" >/dev/null 2>&1; then
    echo "astrid startup: created pool ${ASTRID_INFERENCE_GPU_POOL} (${GPU_POOL_SLOTS:-2} slots)"
  else
    echo "astrid startup: could not create pool ${ASTRID_INFERENCE_GPU_POOL}; create it in the UI"
  fi
}

case "${MWAA_AIRFLOW_COMPONENT:-}" in
  worker)
    astrid_worker_settings
    ;;
  scheduler)
    astrid_ensure_gpu_pool
    ;;
  hybrid)
    astrid_worker_settings
    astrid_ensure_gpu_pool
    ;;
  webserver)
    : # serves the UI, the REST API and the AstrID status plugin under /astrid
    ;;
  *)
    echo "astrid startup: unknown MWAA_AIRFLOW_COMPONENT '${MWAA_AIRFLOW_COMPONENT:-}'; shared settings only"
    ;;
esac
