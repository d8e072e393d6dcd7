"""A push in a process of its own, for the tests that kill one midway or race two:
``python -m tests.remotes.pusher HOME REF REMOTE [--go FILE] [--slow SECONDS]``.

``--go`` waits for FILE to exist before pushing (so two processes start together); ``--slow``
sleeps that long in the progress callback after each object, so a test can kill it midway."""

from __future__ import annotations

import argparse
import json
import os
import time

import deltastore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("home")
    ap.add_argument("ref")
    ap.add_argument("remote")
    ap.add_argument("--go")
    ap.add_argument("--slow", type=float, default=0.0)
    a = ap.parse_args()
    st = deltastore.open_store(a.home)
    if a.go:
        while not os.path.exists(a.go):
            time.sleep(0.01)

    def progress(phase: str, done: int, total: int) -> None:
        if a.slow:
            time.sleep(a.slow)

    r = st.push(a.ref, a.remote, progress=progress)
    print(json.dumps(r.to_dict()))


if __name__ == "__main__":
    main()
