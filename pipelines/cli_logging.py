"""JSON-lines logging for ``fashionbert --log-json``: what a command prints, logs or warns, one object per line.

Used by :mod:`pipelines.cli_support`. While a command runs, ``sys.stdout`` is a
line writer (each ``typer.echo``/``print`` line becomes ``{"ts", "level", "command",
"message"}``), the root logger has one JSON handler (records add ``logger``), warnings
are captured into logging, and tqdm bars are off (the installed tqdm reads
``TQDM_DISABLE`` only at import and lets an explicit ``disable=`` win, so its
``__init__`` is wrapped for the command's duration). Everything is put back afterwards.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

__all__ = ["JsonLines", "json_logging", "utc_timestamp"]


def utc_timestamp(seconds: float | None = None) -> str:
    when = datetime.now(timezone.utc) if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLines:
    """Writes ``{"ts", "level", "command", "message"}`` objects, one per line, to a stream."""

    def __init__(self, command: str, stream: Any) -> None:
        self.command = command
        self.stream = stream
        self._lock = threading.Lock()

    def emit(self, level: str, message: str, ts: float | None = None, **extra: Any) -> None:
        record = {"ts": utc_timestamp(ts), "level": level, "command": self.command, "message": message, **extra}
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock:
            self.stream.write(line)
            self.stream.flush()


class _LineWriter(io.TextIOBase):
    """A stand-in ``sys.stdout``: each completed write (one echo, one print) becomes one JSON line."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, sink: JsonLines) -> None:
        super().__init__()
        self._sink = sink
        self._buffer = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: Any) -> int:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        with self._lock:
            self._buffer += text
            if "\n" not in self._buffer:
                return len(text)
            done, _, self._buffer = self._buffer.rpartition("\n")
        if done.strip():
            self._sink.emit("info", done.rstrip())
        return len(text)

    def flush(self) -> None:  # a partial line waits for its newline
        pass

    def drain(self) -> None:
        with self._lock:
            rest, self._buffer = self._buffer, ""
        if rest.strip():
            self._sink.emit("info", rest.rstrip())


class _JsonLogHandler(logging.Handler):
    def __init__(self, sink: JsonLines) -> None:
        super().__init__()
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            extra = {"logger": record.name}
            if record.exc_info:
                extra["exc"] = logging.Formatter().formatException(record.exc_info)
            self._sink.emit(record.levelname.lower(), record.getMessage(), ts=record.created, **extra)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def _tqdm_disabled() -> Iterator[None]:
    try:
        from tqdm import std
    except ImportError:  # pragma: no cover - tqdm is a dependency
        yield
        return
    cls = std.tqdm
    original = cls.__dict__["__init__"]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        original.__get__(self, type(self))(*args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.__init__ = original  # type: ignore[method-assign]


@contextlib.contextmanager
def json_logging(command: str) -> Iterator[Callable[[str], None]]:
    """Everything the command says, as JSON lines on the current stdout; yields the error reporter."""
    sink = JsonLines(command, sys.stdout)
    writer = _LineWriter(sink)
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    warnings_were_captured = getattr(logging, "_warnings_showwarning", None) is not None
    saved_stdout = sys.stdout
    root.handlers = [_JsonLogHandler(sink)]
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    sys.stdout = writer
    try:
        with _tqdm_disabled():
            yield lambda message: sink.emit("error", message)
    finally:
        sys.stdout = saved_stdout
        writer.drain()
        if not warnings_were_captured:
            logging.captureWarnings(False)
        root.handlers = saved_handlers
        root.setLevel(saved_level)
