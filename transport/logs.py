"""Logging through structlog: JSON lines for machines, readable lines on a terminal.

Context such as the flow id (``corr``) or the node id is bound per asyncio task with
:func:`bind`, so every line a task logs carries it without passing loggers around.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


def configure(
    *, json: bool | None = None, level: str = "info", stream: TextIO | None = None
) -> None:
    """Set up structlog for a process; ``json=None`` picks JSON unless ``stream`` is a TTY."""
    out = stream or sys.stderr
    as_json = not out.isatty() if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def bind(**context: Any) -> None:
    """Bind ``context`` (``corr=``, ``node=``, ``fleet=`` ...) to the current task's log lines.

    Each asyncio task runs in a copy of its creator's context, so what one task binds does not
    leak into its siblings.
    """
    structlog.contextvars.bind_contextvars(**context)
