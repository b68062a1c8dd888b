"""The `rrr` command line: noun-verb groups over the packages.

Only entry points read the environment; these modules turn flags and `RRR_*` variables into plain
arguments for library functions. Expected failures print one line and exit 1.

One module per command group: base (the root app, shared helpers), data (db, tools),
serving (model, engine, serve), evaluation (eval), learn (learn, adapters), demo.
"""

from __future__ import annotations

import logging
import os
import sys

from cli import data, demo, evaluation, learn, serving  # noqa: F401  (each registers its commands)
from cli.base import app, fail

__all__ = ["app", "fail", "main"]


def main() -> None:
    logging.basicConfig(level=os.environ.get("RRR_LOG_LEVEL", "WARNING"), stream=sys.stderr)
    app()
