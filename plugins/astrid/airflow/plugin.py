"""The AstrID Airflow plugin: the status API under ``/astrid``, the AstrID page in the UI's nav,
and the ``infer`` task's extra links.

Every Airflow component loads plugins (scheduler, dag-processor, triggerer, workers, api-server),
so this module stays light: the FastAPI app (:mod:`astrid.airflow.api`) is imported and built on
the first request the api-server routes to it, never at import time.

Airflow's plugin discovery imports every .py file under the plugins folder as a top-level
module; ``plugins/.airflowignore`` hides the astrid package from it and ``plugins/astrid_plugin.py``
imports this class, so the plugin is loaded once, as ``astrid.airflow.plugin``.
"""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from astrid.airflow.operators import DetectionCatalogLink, DetectionsLink, MLflowRunLink
from astrid.status import safe_http_url

URL_PREFIX = "/astrid"
# The UI resolves these against its base URL (<base href>): no leading "/", so they work when
# Airflow is served under a path ([api] base_url = https://host/airflow) as well as at the root.
PAGE_HREF = "astrid/ui"
ICON_HREF = "astrid/static/astrid.svg"
ICON_DARK_HREF = "astrid/static/astrid-dark.svg"


class LazyASGIApp:
    """An ASGI app that builds the real one (``factory`` as ``module:function``) on first call."""

    def __init__(self, factory: str) -> None:
        self.factory = factory
        self._app: Any = None
        self._lock = threading.Lock()

    @property
    def app(self) -> Any:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    import importlib

                    module, _, name = self.factory.partition(":")
                    self._app = getattr(importlib.import_module(module), name)()
        return self._app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    def __repr__(self) -> str:
        return f"LazyASGIApp({self.factory!r})"


status_app = LazyASGIApp("astrid.airflow.api:create_app")


class AstridPlugin(AirflowPlugin):
    name = "astrid"
    fastapi_apps: ClassVar[list[Any]] = [
        {"app": status_app, "url_prefix": URL_PREFIX, "name": "AstrID status API"}
    ]
    external_views: ClassVar[list[Any]] = [
        {  # a top-level nav item; the page is embedded (iframe) at /plugin/astrid
            "name": "AstrID",
            "href": PAGE_HREF,
            "url_route": "astrid",
            "destination": "nav",
            "nav_top_level": True,
            "icon": ICON_HREF,
            "icon_dark_mode": ICON_DARK_HREF,
        },
        {  # no url_route: a plain link (new tab); Grafana refuses to be framed by default
            "name": "AstrID Grafana",
            "href": safe_http_url(os.environ.get("ASTRID_GRAFANA_URL")),
            "destination": "nav",
            "category": "browse",
        },
    ]
    # Lets the UI show the `infer` task's "Detections" / "Detection catalog" / "MLflow run" buttons.
    operator_extra_links: ClassVar[list[Any]] = [DetectionsLink(), DetectionCatalogLink(), MLflowRunLink()]
