"""The daemons' logs: one line per record, as text or as JSON (`--log-format text|json`).

State changes (a peer's path, the relay link, MTU, routes, refusals, reloads) are logged
with fields as well as words: `log.info("...", ..., extra=event("path", peer=name, ...))`.
The text format shows the words; the JSON format one object per line with `ts`, `level`,
`logger`, `msg`, `event` and the fields, for a log pipeline to filter on. Nothing is logged
per packet.

Text from the network (a refused node's name, an error) is escaped in both formats, so it
cannot forge lines of its own. Worker processes log as their daemon does: setup() leaves
the format in TUNNELD_LOG_FORMAT, which they inherit.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

FORMATS = ("text", "json")
ENV = "TUNNELD_LOG_FORMAT"


def event(kind: str, **fields) -> dict:
    """A log call's extra= for a state change: its kind and fields (JSON-able values)."""
    return {"fields": {"event": kind, **fields}}


class OneLineFormatter(logging.Formatter):
    """Every record is one line: control characters escaped."""

    _ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), 127) if c != 9}

    def formatMessage(self, record) -> str:
        return super().formatMessage(record).translate(self._ESCAPES)


class JsonFormatter(logging.Formatter):
    """One JSON object per record and line (json.dumps escapes what needs it)."""

    def format(self, record) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(key, value)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str, fmt: str = "text") -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per etcd call otherwise
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    os.environ[ENV] = fmt  # for the workers this daemon starts
