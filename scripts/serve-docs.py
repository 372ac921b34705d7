"""Serve a docs folder read-only over HTTP: the compose `runbooks` service.

Alert emails and Slack posts link to ``$RUNBOOK_BASE_URL/runbook.md#<alert>``; this makes those links
open on a compose install without publishing the docs anywhere. Markdown is served as UTF-8 plain
text (browsers would otherwise offer ``text/markdown`` as a download). Only GET/HEAD of files under
the folder; the standard library's handler already refuses paths outside it.

    python scripts/serve-docs.py --port 8000 --directory docs
"""

from __future__ import annotations

import argparse
import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar


class DocsHandler(SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".md": "text/plain; charset=utf-8",
    }

    def list_directory(self, path):  # no directory listings: only the files the alerts link to
        self.send_error(404, "Not found")
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on (container: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--directory", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    if not (args.directory / "runbook.md").is_file():
        parser.error(f"--directory {args.directory}: no runbook.md there")
    handler = functools.partial(DocsHandler, directory=str(args.directory.resolve()))
    with ThreadingHTTPServer((args.bind, args.port), handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
