"""Everything the command line writes passes through here, with secrets masked.

The consoles, ``--json`` output, error lines, usage errors and log lines all write through
:class:`RedactingStream`, which applies :func:`deltastore.config.redact` (URL passwords, S3 keys
and other secret-named variables, storage options) to each write. Messages name URLs through
``safe_url`` already; this is the net under them, so no code path can print a secret.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from typing import Any, TextIO

from rich.console import Console

from deltastore.config import redact


class RedactingStream(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` as they are at each write (so redirection works), with
    every string masked by :func:`redact` before it reaches them."""

    def __init__(self, which: str) -> None:
        self._which = which

    @property
    def target(self) -> TextIO:
        return getattr(sys, self._which)

    def write(self, s: str) -> int:
        self.target.write(redact(s))
        return len(s)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target, "encoding", "utf-8") or "utf-8"

    def writable(self) -> bool:
        return True


stdout = RedactingStream("stdout")
stderr = RedactingStream("stderr")
out = Console(file=stdout, width=None if sys.stdout.isatty() else 160)
err = Console(file=stderr, stderr=True, width=None if sys.stderr.isatty() else 160)


def emit_json(data: Any) -> None:
    """``--json`` output: one JSON document on stdout, redacted as a whole (``redact`` knows the
    JSON-escaped form of each secret) by the stream."""
    stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def one_line(msg: str) -> str:
    """A message as the single line an error prints (newlines folded), secrets masked."""
    return redact(" ".join(ln.strip() for ln in str(msg).splitlines() if ln.strip()))


def error(msg: str) -> None:
    err.print(f"deltastore: error: {one_line(msg)}", markup=False, highlight=False, soft_wrap=True)


def show_click_error(e: Any) -> None:
    """A usage error as click words it (usage line, hint, message), redacted: an argument the
    parser rejects may be a URL with a password in it."""
    buf = io.StringIO()
    e.show(file=buf)
    stderr.write(buf.getvalue())


def setup_logging() -> None:
    """Log lines (and warnings) of any library go to stderr through the redacting stream, at
    ``DELTASTORE_LOG_LEVEL`` (default WARNING; DEBUG shows botocore's signed requests, masked);
    a program that configured logging itself keeps its own handlers."""
    root = logging.getLogger()
    if root.handlers:
        return
    h = logging.StreamHandler(stderr)
    h.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    root.addHandler(h)
    level = os.environ.get("DELTASTORE_LOG_LEVEL", "WARNING").upper()
    root.setLevel(level if level in logging.getLevelNamesMapping() else logging.WARNING)
    logging.captureWarnings(True)
