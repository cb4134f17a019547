"""Log lines of every tpserve process: node and rank in each, the request id where there is one.

`--log-format text` (the default) reads well in `kubectl logs`; `--log-format json` gives one JSON
object per line for log pipelines (Loki, Elasticsearch, Cloud Logging), with the same fields.
The front end of a node logs as rank "-": it is not a rank of the group.
"""

from __future__ import annotations

import contextvars
import logging
import sys

LOG_FORMATS = ("text", "json")
# The request a front-end coroutine is serving (the X-Request-Id header, or one made up).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("tpserve_request_id", default=None)

TEXT_FORMAT = "%(asctime)s node%(node)s rank%(rank)s %(levelname)s %(name)s:%(request_tag)s %(message)s"


class _ProcessFields(logging.Filter):
    """Stamp every record with where it comes from (and which request it is about)."""

    def __init__(self, node: int | None, rank: int | None) -> None:
        super().__init__()
        self.node: int | str = "-" if node is None else node
        self.rank = "-" if rank is None else str(rank)

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        record.rank = self.rank
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        record.request_id = request_id
        record.request_tag = f" [{request_id}]" if request_id else ""
        return True


def configure_logging(level: str, log_format: str = "text", node: int | None = None, rank: int | None = None) -> None:
    """Replace the root logger's handlers with one on stderr in `log_format` (idempotent); node and
    rank "-" where a process is neither (a download before the server starts)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ProcessFields(node, rank))
    if log_format == "json":
        # Only servers that ask for JSON need the package.
        from pythonjsonlogger.core import RESERVED_ATTRS
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(node)s %(rank)s %(request_id)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                # The text format's helper and uvicorn's coloured copy of each message stay out.
                reserved_attrs=[*RESERVED_ATTRS, "request_tag", "color_message"],
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
