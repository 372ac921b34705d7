# AstrID on Astro Runtime: the image `astro dev start` runs locally, `astro deploy` ships, and the
# CPU services of docker-compose.yaml use.
#
# Runtime 3.3-8 is an Airflow 3.3.x Runtime tag (tags are <airflow minor>-<runtime patch>); check
# the exact Airflow patch with `docker run --rm <image> airflow version` and keep it in step with
# constraints.txt (apache-airflow==3.3.2) when bumping. See docs/deploy.md.
FROM astrocrpublic.azurecr.io/runtime:3.3-8

# The Runtime image's ONBUILD triggers have already run at this point, in this order:
#   COPY packages.txt -> apt install; COPY requirements.txt -> pip install (as root);
#   COPY --chown=astro:0 . .   (dags/, plugins/, include/ ... into /usr/local/airflow)
# so requirements.txt's torch==2.13.0 came from the default index: on linux/x86_64 that is the
# CUDA-enabled wheel, which also runs on CPU. Astro runs one image for every worker queue, so this
# default keeps a GPU worker queue possible. For a CPU-only deployment pass a CPU wheel index:
#   astro dev start --build-arg TORCH_INDEX_URL=<index>  /  docker build --build-arg TORCH_INDEX_URL=<index>
# and the CUDA wheel is swapped for the CPU one and the nvidia-*/triton runtime wheels removed.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""

USER root
RUN set -eu; \
    if [ -n "${TORCH_INDEX_URL}" ]; then \
      if python -m pip --version >/dev/null 2>&1; then PIP="python -m pip"; else PIP="uv pip"; fi; \
      $PIP install --no-cache-dir --force-reinstall --no-deps --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"; \
      gpu_wheels="$(python -m pip list --format=freeze 2>/dev/null | grep -iE '^(nvidia-|triton==|cuda-)' | cut -d= -f1 || true)"; \
      if [ -n "${gpu_wheels}" ]; then $PIP uninstall -y ${gpu_wheels} || true; fi; \
    fi; \
    python -c "import torch; print('torch', torch.__version__, 'cuda build:', torch.version.cuda)"
# Bytecode for the project's own modules, built once here so that no DAG parse compiles them
# (~1/3 of a fresh parse otherwise; docs/benchmarks.md "DAG parse").
RUN python -m compileall -q /usr/local/airflow/dags /usr/local/airflow/plugins
USER astro

# Runs on arrival need a Redis or an SQS queue the Deployment reaches, which Astro does not provide
# (docs/deploy.md, "Astro"): until the Deployment's environment sets ASTRID_INFERENCE_EVENTS_URL
# (plus the astrid_events connection for Redis) and ASTRID_INFERENCE_EVENTS_ENABLED=true, the
# realtime DAG runs on its cron only, with no watcher in the triggerer that could only fail.
# docker-compose.yaml, which builds its CPU services from this file, turns it on with its own Redis.
ENV ASTRID_INFERENCE_EVENTS_ENABLED=false

# plugins/ is on sys.path in every Airflow component; fail the build, not the first task, if the
# AstrID package cannot be imported with the installed dependencies.
RUN PYTHONPATH=/usr/local/airflow/plugins python -c "import astrid.config; astrid.config.load_config()"
