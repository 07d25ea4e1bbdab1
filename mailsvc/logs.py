"""Logging for every mailsvc process: plain text for people, or one JSON object per line
(`MAILSVC_LOG_FORMAT=json`) for log collectors. uvicorn's own loggers (errors and the access
log) go through the same handler, so every line of a process has the same format."""

from __future__ import annotations

import logging
import sys
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s %(message)s"
# The keys of every JSON line; anything passed in ``extra=`` is added to them.
JSON_FIELDS = ("asctime", "levelname", "name", "process", "message")

# Libraries whose INFO lines are noise in operation: mail-parser warns about every content type
# it leaves to us; aiosmtpd logs every SMTP command.
_QUIET = {"mailparser": logging.ERROR, "mail.log": logging.WARNING}


def formatter(fmt: LogFormat) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(
            list(JSON_FIELDS),
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger",
                           "process": "pid"},
            timestamp=False,
        )
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str, fmt: LogFormat = "text") -> None:
    """One stderr handler on the root logger; uvicorn's loggers propagate to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name, quiet in _QUIET.items():
        logging.getLogger(name).setLevel(max(quiet, root.level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
