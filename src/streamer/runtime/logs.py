"""Log lines: one per event, and every line written for a session names it and its trace.

The session id and trace id live in a context variable, set where a stream's work begins
(`bound`): in the front's per-session task (asyncio copies the context into it) and in an
actor around each message it handles. A filter appends them to every record, so library
code that logs knows nothing about sessions and still gets tagged. Audio and tokens never
reach a log line: only ids, sizes and times.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator

_where: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("streamer_session", default=None)


class _SessionTag(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        where = _where.get()
        record.session = f" session={where[0]} trace={where[1]}" if where else ""
        return True


def setup_logging(name: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_SessionTag())
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s%(session)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)


def bind(session: str, trace_id: str) -> None:
    """Tag every following log line of this task/context with the session and trace."""
    _where.set((session, trace_id))


@contextlib.contextmanager
def bound(session: str, trace_id: str) -> Iterator[None]:
    """Tag the log lines written inside the block (an actor handling one stream's message)."""
    token = _where.set((session, trace_id))
    try:
        yield
    finally:
        _where.reset(token)


def trace_of(traceparent: str | None) -> str:
    """The trace id of a W3C traceparent ("00-<trace id>-<span id>-<flags>"), "-" if none."""
    parts = (traceparent or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else "-"
