"""Checkpoint series: which version a new checkpoint deltas against (linear near the head, skip-deltas beyond, as in FSFS).

A training run stored as ``deltastore add finetune RUN PATH --base RUN@latest --codec lossless``
would chain every checkpoint on the one before, so a checkout of checkpoint n decodes n deltas
(each lossless delta needs its base's exact bits). Subversion's FSFS bounds the same walk with
*skip-deltas*, and since Subversion 1.8 it deltas on the predecessor until the skip would reach
back :data:`LINEAR` (its ``max-linear-deltification``, default 16) or more; this module does the same:

- the **series** of a model is its run of versions since the last one whose base is outside the
  model (its **root**: usually v1, the first checkpoint, a delta against the base model); versions
  are numbered in the series from 1, the root (so when the root is v1, index = version number);
- the version at index k > 1 deltas against its predecessor, index k - 1, unless k's lowest set
  bit is :data:`LINEAR` or more; then against index ``k & (k - 1)`` (k with that bit cleared), the
  root when that is 0 (:func:`base_index`). So 15 of every 16 checkpoints delta on their
  predecessor, whose difference is the smallest, and every 16th on an older one (16, 32 on the
  root, 48 on 32, ...). A checkout of index k walks at most LINEAR - 1 + popcount(k // LINEAR)
  deltas to the root (:func:`chain_depth`: 15 up to k = 15, 16 up to 31, 21 up to 1,023), plus the root's own.

Why not pure skip-deltas (every even index on an older checkpoint: a walk of popcount(k) <= log2(k) + 1,
what this module did before): a difference grows with the distance between checkpoints, and the
skips cost bytes on half the checkpoints. Measured on a real small-lr SmolLM2 run saved every 10
steps (benchmarks/results/lossless_amd-epyc-2c.md, run 53): checkpoint 8 against the root took 4.01
MB against 1.62 on its predecessor, 45x under zipnn where the issue asks for 50x, and checkpoints
2-10 together 1.27x the bytes of a linear chain (20.66 against 16.29 MB; every one of them 75x or more
under zipnn with this module's bases). ``DELTASTORE_SERIES_LINEAR=1`` chooses pure
skip-deltas again (Subversion's own setting for that: 1), a larger power of two longer linear runs.

Why not a full snapshot every K versions: a snapshot costs a whole lossless model (zipnn-sized,
~0.67 of the fine-tune) every K checkpoints, while a skip-delta costs a delta against a checkpoint
a few saves back. Why not always delta against the root (an anchor): the difference to the root
grows with the run, so late checkpoints would cost nearly what a fine-tune of the base costs.

Lineage: the version's recorded base (``log``'s "base", ``lineage``'s tree, what ``rm`` protects
and a checkout walks) is the *actual* delta base, because that is the dependency. The series
order is the version numbers (``log`` lists them in order), and the checkpoint a version was
added after (the ``--base`` the caller named) is kept in its metrics under
:data:`PREVIOUS_KEY`, so ``show``/``log --json`` say both.

The choice is made before the add's commit from the catalog as it is then; a concurrent add to
the same model can take the number this module assumed, which makes the choice less balanced
but never wrong (any version of the model is a valid base for a lossless delta).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from . import codec as codecs
from .catalog import Model, Version
from .errors import BadInputError, ChainTooDeepError, CorruptObjectError, NotFoundError, ObjectMissingError
from .lookup import resolve_version
from .protocols import StoreView

#: a series deltas each checkpoint on its predecessor until the skip-delta would reach back this far
#: (Subversion 1.8's ``max-linear-deltification`` and its default; ``DELTASTORE_SERIES_LINEAR``)
LINEAR = 16
#: metrics key under which a series version records the checkpoint it was added after
PREVIOUS_KEY = "series_previous"
#: the deepest base chain (links from a version down to its root base) a version may have: a
#: tensor is rebuilt by recursing down the chain (materialize.tensor_bytes, a Python frame a
#: link), and Python stops at 1,000 frames, so a deeper chain failed midway with RecursionError,
#: reported as a corrupt manifest; half that leaves room for the caller's own stack. A series
#: stays far below it (LINEAR - 1 + log2(n) deltas: :func:`chain_depth`)
MAX_BASE_CHAIN = 500


def _depth(store: StoreView, oid: str, limit: int) -> int:
    """Base links from manifest ``oid`` down to its root, counted up to ``limit`` + 1 (then it
    stops). Follows the manifests' base links, as a checkout does (each read once, cached); a base
    that is missing, damaged or loops back ends the count, for the reading that follows to report."""
    depth, seen, at = 0, set(), oid
    while at not in seen and depth <= limit:
        seen.add(at)
        try:
            base = store.manifest(at).base
        except (ObjectMissingError, CorruptObjectError):
            break
        if base is None:
            break
        depth += 1
        at = base
    return depth


def check_depth(store: StoreView, ref: str, *, adding: bool = False) -> int:
    """How many base links REF's version is from its root (0: a base), counted up to
    MAX_BASE_CHAIN + 1. ChainTooDeepError naming the version when it is deeper than
    MAX_BASE_CHAIN, or, with ``adding``, when a fine-tune of it would be."""
    try:
        info = store.resolve(ref)
    except NotFoundError:
        if adding:  # an unknown base: the add itself says so, after its own argument checks
            return 0
        raise
    limit = MAX_BASE_CHAIN - 1 if adding else MAX_BASE_CHAIN
    depth = _depth(store, info.manifest, limit)
    if depth > limit and adding:
        raise ChainTooDeepError(f"{info.ref} is at least {depth} base links from its root: a fine-tune of it would be "
                                f"deeper than the limit of {MAX_BASE_CHAIN} that deltastore rebuilds tensors through; "
                                "add it on a version nearer the root, or as a base")
    if depth > limit:
        raise too_deep(info.ref)
    return depth


def too_deep(ref: str) -> ChainTooDeepError:
    """The error for version REF, whose base chain is deeper than MAX_BASE_CHAIN (a checkout's,
    and a pull's or push's: transfer.chain_of refuses such a version before anything moves)."""
    return ChainTooDeepError(f"{ref}'s base chain is deeper than the limit of {MAX_BASE_CHAIN} versions that "
                             "deltastore rebuilds tensors through")


def check_manifest_depth(store: StoreView, manifest_oid: str, what: str) -> None:
    """:func:`check_depth` for a reader that holds a manifest id, not a REF (the mount): ``what``
    names the version in the error."""
    if _depth(store, manifest_oid, MAX_BASE_CHAIN) > MAX_BASE_CHAIN:
        raise ChainTooDeepError(f"{what}: its base chain is deeper than the limit of {MAX_BASE_CHAIN} versions that "
                                "deltastore rebuilds tensors through")


@dataclass(frozen=True)
class DeltaBase:
    """The base to delta against, and what to record about the choice."""

    ref: str  # the REF the add should use as its base
    previous: str | None  # the checkpoint the caller named (the series predecessor), when it differs
    index: int | None  # the new version's index in its series (None: not a series add)


def linear() -> int:
    """:data:`LINEAR`, or ``DELTASTORE_SERIES_LINEAR`` where set (a whole number >= 1; 1: skip-deltas only)."""
    env = os.environ.get("DELTASTORE_SERIES_LINEAR")
    if env is None:
        return LINEAR
    if not (env.isascii() and env.isdigit() and 1 <= int(env) <= 1 << 20):
        raise BadInputError(f"DELTASTORE_SERIES_LINEAR={env!r}: give a whole number from 1 to {1 << 20}")
    return int(env)


def skip_index(k: int) -> int:
    """Index of the skip-delta base of series index ``k`` >= 1: ``k`` with its lowest set bit
    cleared (0 means the root, index 1)."""
    if k <= 0:
        raise ValueError(f"series index must be positive, got {k}")
    return k & (k - 1)


def base_index(k: int, run: int | None = None) -> int:
    """Index of the delta base of series index ``k`` >= 1 (0 means the root, index 1): ``k - 1``
    where ``k``'s lowest set bit is under ``run`` (default :func:`linear`), else :func:`skip_index`."""
    low = k & -k if k > 0 else 0
    run = linear() if run is None else run
    return k - 1 if low < run else skip_index(k)


def chain_depth(k: int, run: int | None = None) -> int:
    """Deltas a checkout of series index ``k`` walks down to the series' root (the root's own not counted)."""
    run = linear() if run is None else run
    n = 0
    while k > 1:
        k = base_index(k, run)
        n += 1
    return n


def delta_base(store: StoreView, name: str, base_ref: str, codec: codecs.Codec | None) -> DeltaBase:
    """The base a new version of ``name`` should delta against when the caller asked for ``base_ref``.

    Only a lossless add whose ``base_ref`` names the latest version of ``name`` itself (a checkpoint
    series: ``--base RUN@latest``) is redirected to its series base (:func:`base_index`); any other add keeps the base
    it named (a lossy delta on a lossy delta would stack errors, and an explicit older base is a choice)."""
    same = DeltaBase(base_ref, None, None)
    if codec is None or not codec.lossless:
        return same
    with store.Session() as s:
        try:
            prev = resolve_version(s, base_ref)
        except NotFoundError:  # an unknown REF: the add itself says so
            return same
        m = s.scalar(select(Model).where(Model.name == name))
        if m is None or prev.model_id != m.id:
            return same
        latest = s.scalar(select(func.max(Version.number)).where(Version.model_id == m.id))
        if prev.number != latest:
            return same
        base_v = aliased(Version)
        # the root: the newest version up to prev whose base is not a version of this model
        root = s.scalar(
            select(func.max(Version.number))
            .outerjoin(base_v, Version.base_version_id == base_v.id)
            .where(Version.model_id == m.id, Version.number <= prev.number,
                   (Version.base_version_id.is_(None)) | (base_v.model_id != m.id)))
        if root is None:  # every version chains inside the model (hand-made): nothing to bound
            return same
        k = prev.number + 2 - root  # the new version's index (the root's is 1)
        j = base_index(k)
        target = root + j - 1 if j else root
        if target == prev.number:
            return DeltaBase(base_ref, None, k)
        exists = s.scalar(select(Version.id).where(Version.model_id == m.id, Version.number == target))
        if exists is None:  # removed: fall back on the predecessor
            return DeltaBase(base_ref, None, k)
        return DeltaBase(f"{name}@v{target}", f"{name}@v{prev.number}", k)
