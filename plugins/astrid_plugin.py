"""Entry point Airflow's plugin manager loads (plugins/.airflowignore hides the astrid package
itself, so the manager does not import every module of it — torch included — at start-up)."""

from astrid.airflow.plugin import AstridPlugin

__all__ = ["AstridPlugin"]
