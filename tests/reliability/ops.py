"""One store operation in a process of its own, for the crash and concurrency tests.

    python -m tests.reliability.ops HOME OP ARGS...           one operation; exit 0, 1 (a store error), 2 (anything else)
    python -m tests.reliability.ops HOME random SEED ROUNDS SRCDIR LOG   random add/rm/gc/tag/checkout

``DB_URL`` / ``OBJECTS_URL`` in the environment point the store at PostgreSQL / S3. The random
worker appends one JSON line per operation to LOG: what it did and how it ended, so the test can
check every add landed with its own version or failed with a store error, never anything else.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback
from pathlib import Path

import deltastore
from deltastore.errors import DeltaStoreError


def open_store(home: str) -> deltastore.Store:
    return deltastore.open(home, db_url=os.environ.get("DB_URL") or None, objects_url=os.environ.get("OBJECTS_URL") or None)


def one(st: deltastore.Store, op: str, args: list[str]) -> object:
    if op == "add-base":
        return st.add_base(args[0], args[1], message=Path(args[1]).name, tags=args[2:])
    if op == "add-ft":
        return st.add_finetune(args[0], args[1], args[2], codec="lossless", message=Path(args[1]).name)
    if op == "gc":
        return st.gc()
    if op == "checkout":
        return st.checkout(args[0], args[1], overwrite=len(args) > 2)
    if op == "rm":
        return st.rm(args[0])
    if op == "tag":
        return st.tag(args[0], args[1])
    if op == "verify":
        return st.verify()
    raise SystemExit(f"unknown op {op}")


def main_one(home: str, op: str, args: list[str]) -> int:
    st = open_store(home)
    try:
        one(st, op, args)
    except DeltaStoreError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        st.close()
    return 0


def main_random(home: str, seed: int, rounds: int, srcdir: str, log: str) -> int:
    rng = random.Random(seed)
    bases = sorted(p for p in Path(srcdir).iterdir() if p.name.startswith("base"))
    fts = sorted(p for p in Path(srcdir).iterdir() if p.name.startswith("ft"))
    st = open_store(home)
    out = open(log, "a")
    try:
        for i in range(rounds):
            op = rng.choices(["add-base", "add-ft", "rm", "gc", "tag", "checkout"], [4, 3, 2, 1, 1, 2])[0]
            rec: dict = {"worker": seed, "round": i, "op": op}
            t0 = time.time()
            try:
                if op == "add-base":
                    src = rng.choice(bases)
                    name = rng.choice(["b", "c"])
                    v = st.add_base(name, src, message=src.name)
                    rec.update(ref=v.ref, manifest=v.manifest, created=v.created_at.isoformat(), src=src.name)
                elif op == "add-ft":
                    src = rng.choice(fts)
                    v = st.add_finetune("f", src, "b", codec="lossless", message=src.name)
                    rec.update(ref=v.ref, manifest=v.manifest, created=v.created_at.isoformat(), src=src.name)
                else:
                    vs = [v for m in st.models() for v in st.versions(m.name)]
                    if not vs:
                        rec["skipped"] = "empty store"
                    else:
                        v = rng.choice(vs)
                        rec["ref"] = v.ref
                        if op == "rm":
                            r = st.rm(v.ref)
                            rec.update(manifest=r.manifest, created=r.created_at.isoformat())
                        elif op == "gc":
                            rec["deleted"] = st.gc().deleted
                        elif op == "tag":
                            st.tag(v.ref, rng.choice(["prod", "best"]))
                        else:
                            dest = Path(log).parent / f"co-{seed}-{i}"
                            st.checkout(v.ref, dest)
                            rec.update(out=str(dest), manifest=v.manifest, src=v.message)
                rec["ok"] = True
            except DeltaStoreError as e:
                rec.update(ok=False, error=type(e).__name__, msg=str(e)[:300])
            except Exception as e:  # noqa: BLE001 - what the test must never see
                rec.update(ok=False, error="UNCLEAN " + type(e).__name__, msg=traceback.format_exc()[-2000:])
            rec["s"] = round(time.time() - t0, 3)
            out.write(json.dumps(rec) + "\n")
            out.flush()
    finally:
        out.close()
        st.close()
    return 0


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[1] == "random":
        sys.exit(main_random(a[0], int(a[2]), int(a[3]), a[4], a[5]))
    sys.exit(main_one(a[0], a[1], a[2:]))
