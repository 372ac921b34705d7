"""Housekeeping operators: metadata DB clean-up and task-log retention (the maintenance DAG)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

from airflow.sdk import BaseOperator


class DbCleanOperator(BaseOperator):
    """`airflow db clean` of metadata rows older than the retention, the way the platform allows.

    ``mode`` is ``ASTRID_INFERENCE_DB_CLEAN`` (:func:`astrid.maintenance.resolve_db_clean_mode`
    turns ``auto`` into ``api`` on Astro, ``mwaa`` on MWAA, ``cli`` elsewhere, from the worker's
    environment):

    - ``api``: ``POST /astrid/maintenance/db-clean`` on the api-server, which has the metadata DB
      (connection ``astrid_airflow_api``, :class:`~astrid.airflow.hooks.AirflowApiHook`);
    - ``mwaa``: ``airflow db clean`` through MWAA's CLI endpoint, with a token from the amazon
      provider's :class:`MwaaHook` client (``aws_conn_id``; environment ``mwaa_environment``);
    - ``cli``: ``airflow db clean`` as a subprocess, when ``airflow db check`` passes on this worker;
    - ``external`` / ``off``: nothing.

    Where it cannot clean (``external``/``off``, no DB, no connection or credentials, an api-server
    without the plugin, an MWAA environment it may not reach) the task is **skipped** with a
    message naming what to run instead, never failed: three failed runs would pause the DAG
    (``max_consecutive_failed_dag_runs``) and stop the log pruning too. A clean-up that ran and
    broke fails the task.
    """

    template_fields: Sequence[str] = (
        "retention_days",
        "mode",
        "mwaa_environment",
        "airflow_api_conn_id",
        "aws_conn_id",
    )
    ui_color = "#f4e7d3"

    def __init__(
        self,
        *,
        retention_days: int | str,
        mode: str = "auto",
        mwaa_environment: str = "",
        airflow_api_conn_id: str = "astrid_airflow_api",
        aws_conn_id: str | None = "aws_default",
        timeout_seconds: float = 1800,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.retention_days, self.mode, self.mwaa_environment = retention_days, mode, mwaa_environment
        self.airflow_api_conn_id, self.aws_conn_id = airflow_api_conn_id, aws_conn_id
        self.timeout_seconds = timeout_seconds

    def execute(self, context: Any) -> dict[str, Any]:
        from astrid.logs import log_event
        from astrid.maintenance import clean_before, instead, platform_of, resolve_db_clean_mode

        mode = resolve_db_clean_mode(str(self.mode).strip())
        before = clean_before(float(self.retention_days))
        if mode in ("external", "off"):
            self.skip(
                f"ASTRID_INFERENCE_DB_CLEAN={self.mode}: this DAG does not clean the metadata DB; "
                + instead(platform_of())
            )
        self.log.info("metadata clean-up (%s) of rows older than %s", mode, before.isoformat())
        result = {"mode": mode, "clean_before": before.isoformat(), **getattr(self, f"clean_{mode}")(before)}
        log_event("maintenance.db_clean", run_id=context["run_id"], **result)
        return result

    def skip(self, message: str) -> NoReturn:
        from airflow.sdk.exceptions import AirflowSkipException

        self.log.warning("metadata clean-up skipped: %s", message)
        raise AirflowSkipException(message)

    # -- the three ways to clean ---------------------------------------------------------------

    def clean_cli(self, before: datetime) -> dict[str, Any]:
        from astrid.maintenance import db_clean_args, instead, platform_of, run_airflow

        check = run_airflow(["db", "check"], timeout=300)
        if check.returncode != 0:
            self.skip(
                "this worker cannot reach Airflow's metadata DB (`airflow db check` failed: "
                f"{_tail(check.stderr or check.stdout, 400)}); " + instead(platform_of())
            )
        args = db_clean_args(before)
        done = run_airflow(args, timeout=self.timeout_seconds)
        self.log.info("airflow %s\n%s", " ".join(args), _tail(done.stdout, 4000))
        if done.returncode != 0:
            raise RuntimeError(f"airflow db clean failed ({done.returncode}): {_tail(done.stderr, 2000)}")
        return {}

    def clean_api(self, before: datetime) -> dict[str, Any]:
        import requests

        from astrid.airflow.hooks import AirflowApiHook
        from astrid.airflow.plugin import URL_PREFIX
        from astrid.maintenance import API_PATH

        hook = AirflowApiHook(self.airflow_api_conn_id)
        if hook.connection is None or not hook.connection.password:
            self.skip(
                f"Airflow connection {self.airflow_api_conn_id!r} with credentials is not defined: give it "
                "the api-server URL (host) and login/password, or an API token as password (docs/deploy.md)"
            )
        url = hook.base_url + URL_PREFIX.strip("/") + "/" + API_PATH
        try:
            token = hook.token()
            answer = requests.post(
                url,
                json={"clean_before_timestamp": before.isoformat()},
                headers={"Authorization": f"Bearer {token}"},
                timeout=self.timeout_seconds,
            )
        except requests.HTTPError as exc:  # the token request: wrong login or password
            self.skip(
                f"{hook.base_url}auth/token refused the credentials of {self.airflow_api_conn_id!r}: {exc}"
            )
        except requests.RequestException as exc:
            self.skip(f"the api-server at {hook.base_url} cannot be reached: {exc}")
        if answer.status_code in (401, 403, 404):
            why = {
                401: "refused the credentials",
                403: "refused: the user needs delete access to all DAG runs and configuration write (role op)",
                404: "has no AstrID maintenance endpoint (is the AstrID plugin loaded in the api-server?)",
            }[answer.status_code]
            self.skip(f"POST {url} {why} (HTTP {answer.status_code})")
        if not answer.ok:
            raise RuntimeError(f"POST {url}: HTTP {answer.status_code}: {_tail(answer.text, 2000)}")
        body = answer.json()
        self.log.info("cleaned through the api-server: %s", body)
        return {
            "older_rows_before": body.get("older_rows_before"),
            "older_rows_after": body.get("older_rows_after"),
        }

    def clean_mwaa(self, before: datetime) -> dict[str, Any]:
        import requests
        from airflow.providers.amazon.aws.hooks.mwaa import MwaaHook
        from botocore.exceptions import BotoCoreError, ClientError

        from astrid.maintenance import db_clean_args, decode_mwaa_cli

        if not self.mwaa_environment:
            self.skip("ASTRID_INFERENCE_MWAA_ENVIRONMENT is empty: set it to this MWAA environment's name")
        try:
            token = MwaaHook(aws_conn_id=self.aws_conn_id).conn.create_cli_token(Name=self.mwaa_environment)
        except (ClientError, BotoCoreError) as exc:
            self.skip(
                f"no MWAA CLI token for environment {self.mwaa_environment!r} ({exc}); the execution role "
                "needs airflow:CreateCliToken on it"
            )
        url = f"https://{token['WebServerHostname']}/aws_mwaa/cli"
        command = " ".join(db_clean_args(before))
        try:
            answer = requests.post(
                url,
                data=command,
                headers={"Authorization": f"Bearer {token['CliToken']}", "Content-Type": "text/plain"},
                timeout=self.timeout_seconds,
            )
        except requests.RequestException as exc:
            self.skip(f"MWAA's CLI endpoint {url} cannot be reached: {exc}")
        if answer.status_code in (401, 403):
            self.skip(f"MWAA's CLI endpoint refused the token (HTTP {answer.status_code})")
        if not answer.ok:
            raise RuntimeError(f"MWAA CLI endpoint: HTTP {answer.status_code}: {_tail(answer.text, 2000)}")
        stdout, stderr = decode_mwaa_cli(answer.json())
        self.log.info("airflow %s (MWAA)\n%s\n%s", command, _tail(stdout, 4000), _tail(stderr, 2000))
        # the endpoint answers 200 whatever the command's exit status: a traceback or an argument
        # error on stderr is the failure
        if "Traceback (most recent call last)" in stderr or "command error:" in stderr:
            raise RuntimeError(f"airflow db clean failed on MWAA: {_tail(stderr, 2000)}")
        return {}


def _tail(text: str | None, n: int) -> str:
    return (text or "")[-n:]


class PruneTaskLogsOperator(BaseOperator):
    """Delete local task log files older than the retention (see :func:`astrid.maintenance.prune_logs`)."""

    template_fields: Sequence[str] = ("retention_days", "log_folder")

    def __init__(self, *, retention_days: int | str, log_folder: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.retention_days, self.log_folder = retention_days, log_folder

    def execute(self, context: Any) -> dict[str, int]:
        from dataclasses import asdict
        from pathlib import Path

        from airflow.sdk.configuration import conf

        from astrid.logs import log_event
        from astrid.maintenance import prune_logs

        folder = Path(self.log_folder or conf.get("logging", "base_log_folder"))
        report = prune_logs(folder, float(self.retention_days))
        log_event("maintenance.prune_logs", run_id=context["run_id"], folder=str(folder), **asdict(report))
        return asdict(report)
