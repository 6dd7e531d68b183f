"""Structured logs: one JSON object per event, so runs can be searched and audited by machine."""

from __future__ import annotations

import json
import logging
import sys

logger = logging.getLogger("anonymizer")


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": self.formatTime(record), "level": record.levelname, "event": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup(level: int = logging.INFO) -> None:
    if not any(isinstance(h.formatter, _Json) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Json())
        logger.addHandler(handler)
    logger.setLevel(level)


def event(name: str, level: int = logging.INFO, **fields) -> None:
    logger.log(level, name, extra={"fields": fields})
