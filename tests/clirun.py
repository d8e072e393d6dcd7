"""``deltastore ARGS`` run in this process, as a CompletedProcess: the CLI tests' one runner."""

from __future__ import annotations

import contextlib
import io
import subprocess


def cli(*args: str) -> subprocess.CompletedProcess:
    """``deltastore ARGS`` through :func:`deltastore.cli.main.main`, in this process; the exit code
    is SystemExit's (1 for a non-integer code), stdout and stderr as text."""
    from deltastore.cli.main import main

    o, e = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try:
            main(list(args))
        except SystemExit as x:
            code = x.code if isinstance(x.code, int) else 1
    return subprocess.CompletedProcess(args, code, o.getvalue(), e.getvalue())
