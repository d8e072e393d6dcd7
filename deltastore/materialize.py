"""Tensor bytes from objects, and everything built on them: ``tensor``, ``iter_tensors``,
``state_dict``, ``checkout``, ``diff``. Lazy loading and the mount read through here too.

A tensor's bytes come from a tensor object, from the base version's tensor (unchanged by the
fine-tune), or from a delta object applied to the base's tensor, resolved recursively down the
base chain. Every read is verified against the sha256 the tensor was added with where the version
is exact, so a checkout of a lossless version is byte-identical or an error, never wrong bytes.
Tensors decode in parallel (``store.workers`` at a time) and are written in file order.

Lossy deltas are decoded on the GPU where that is asked for (``tensor``/``iter_tensors``/
``state_dict`` with a CUDA device) or, for ``checkout``, where a GPU is present: packed -> dense
delta by the kernels there (:func:`tensor_on`; within one ulp of the CPU decode, see there);
``DELTASTORE_GPU_DECODE=0`` keeps every decode on the CPU. Without a GPU nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import mmap
import os
import stat
import threading
import time
import weakref
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from . import codec as codecs
from .errors import BadInputError, CorruptObjectError, NotFoundError
from .libc import function as libc_function
from .manifest import FileEntry, TensorEntry, payload_bound
from .objects import ObjectDB, Scratch, oid_of, pwrite_all
from .pipeline import BufferPool, frozen_heap, largest_first, ordered_map
from .protocols import Progress, StoreView, no_progress
from .results import CheckoutResult, TensorDiff
from .safetensors_io import DTYPES, FLOAT_CODES, TORCH_TO_CODE, TensorInfo, as_tensor, build_header


def info_of(entry: TensorEntry) -> TensorInfo:
    """The safetensors view of a manifest's tensor entry (offsets do not matter here)."""
    return TensorInfo(entry.name, entry.dtype, tuple(entry.shape), 0, entry.nbytes)


def stored_entry(store: StoreView, manifest_oid: str, t: TensorEntry) -> tuple[str, TensorEntry]:
    """Follow ``base`` links down the base chain to the manifest whose entry holds the bytes:
    (that manifest's id, its entry). A chain that loops, a missing base or base entry, or a base
    entry of another size is a :class:`CorruptObjectError`."""
    owner, entry, seen = manifest_oid, t, set()
    while entry.source == "base":
        if owner in seen:
            raise CorruptObjectError(owner, "the base chain loops")
        seen.add(owner)
        base = store.manifest(owner).base
        if base is None:
            raise CorruptObjectError(owner, f"tensor {t.name!r} refers to a base, but the manifest has none")
        nxt = store.manifest(base).tensor_map().get(t.name)
        if nxt is None:
            raise CorruptObjectError(base, f"base manifest lacks tensor {t.name!r}")
        if nxt.nbytes != entry.nbytes:
            raise CorruptObjectError(owner, f"tensor {t.name!r} names the base's, which has another size")
        owner, entry = base, nxt
    return owner, entry


def tensor_bytes(store: StoreView, manifest_oid: str, entry: TensorEntry, *, verify: bool = True,
                 out: np.ndarray | None = None, check_base: bool = True, scratch: Scratch | None = None) -> np.ndarray:
    """The version's bytes for one tensor (uint8), resolving deltas against the base chain.

    ``verify`` re-hashes what was decoded against the id or sha256 it must have; only callers
    that verify the same bytes another way turn it off. ``out`` (uint8, ``entry.nbytes``): where
    to put the bytes, returned; a checkout passes its window onto the file it writes, so a tensor
    object decodes straight into the file, with no buffer of its own and no second copy.
    ``check_base=False`` (a checkout): an exact delta's base is decoded without re-hashing it,
    since the result is checked against its own sha256, which a wrong base cannot pass; the base
    is checked only when the result is wrong, to name the culprit. Callers that keep verified base
    tensors for reuse (the mount's cache) leave it on. ``scratch``: buffers that a tensor object's
    read borrows (:meth:`ObjectDB.get_array`; an add's pool)."""
    if out is not None and out.size != entry.nbytes:
        raise ValueError(f"tensor_bytes: out holds {out.size} bytes, {entry.name!r} has {entry.nbytes}")
    if entry.source == "tensor":
        if entry.object != "sha256:" + entry.sha256:  # tensor objects are named by the bytes that were added
            raise CorruptObjectError(manifest_oid, f"tensor {entry.name!r} names object {entry.object}, not its own sha256")
        got = store.objects.get_array(entry.object, verify=verify, nbytes=entry.nbytes, out=out,  # checked before allocating
                                      scratch=scratch)
        if got.size != entry.nbytes:
            raise CorruptObjectError(entry.object, f"tensor {entry.name!r} decodes to {got.size} bytes, the manifest says {entry.nbytes}")
        return got
    man = store.manifest(manifest_oid)
    if man.base is None:
        raise CorruptObjectError(manifest_oid, f"tensor {entry.name!r} refers to a base, but the manifest has none")
    base_entry = store.manifest(man.base).tensor_map().get(entry.name)
    if base_entry is None:
        raise CorruptObjectError(man.base, f"base manifest lacks tensor {entry.name!r}")
    if entry.source == "base":
        if base_entry.nbytes != entry.nbytes:
            raise CorruptObjectError(manifest_oid, f"tensor {entry.name!r} names the base's, which has another size")
        return tensor_bytes(store, man.base, base_entry, verify=verify, out=out, scratch=scratch)
    if entry.source != "delta":
        raise CorruptObjectError(manifest_oid, f"unknown tensor source {entry.source!r}")
    _check_delta_entry(manifest_oid, entry, base_entry)
    final_check = verify and entry.exact
    skip = final_check and not check_base  # one SHA-256 pass of the tensor less (see the docstring)
    base_raw = tensor_bytes(store, man.base, base_entry, verify=verify and not skip, check_base=check_base)
    base_t = as_tensor(info_of(base_entry), base_raw)
    payload = store.objects.get_view(entry.object, verify=verify, max_size=payload_bound(entry.nbytes))
    try:
        enc = codecs.from_bytes(payload, copy=False)  # read and dropped here: views of the payload, no copies
        _check_payload(enc, entry)
        codec = codecs.codec_class(enc.codec).from_config(enc.params)
        # into the caller's window (a checkout's file) where given: lossless decodes there with no
        # array of its own; the sha256 check below reads the window
        if out is not None:
            raw = codec.reconstruct_into(enc, base_t, out)
        else:
            raw = codec.reconstruct(enc, base_t).contiguous().reshape(-1).view(torch.uint8).numpy()
    except codecs.CodecError as e:
        # a codec may tell a wrong base itself (lossless: its context counts): name the base then
        _blame_unchecked_base(store, man.base, base_entry, skip)
        raise CorruptObjectError(entry.object, str(e)) from None
    except (TypeError, ValueError, KeyError, RuntimeError) as e:  # a payload the codec could not make sense of
        _blame_unchecked_base(store, man.base, base_entry, skip)
        raise CorruptObjectError(entry.object, f"payload does not decode: {type(e).__name__}: {e}") from None
    if raw.size != entry.nbytes:
        raise CorruptObjectError(entry.object, f"tensor {entry.name!r} decodes to {raw.size} bytes, the manifest says {entry.nbytes}")
    if final_check and oid_of(raw) != "sha256:" + entry.sha256:
        del base_t, base_raw
        _blame_unchecked_base(store, man.base, base_entry, skip)
        raise CorruptObjectError(entry.object, f"tensor {entry.name!r} decodes to bytes that do not match the sha256 it was added with")
    return raw  # ``out`` itself when given (reconstruct_into wrote it; its size was checked above)


def _check_delta_entry(manifest_oid: str, entry: TensorEntry, base_entry: TensorEntry) -> None:
    """A delta applies to a base tensor of its own shape (an add refuses any other): a manifest that
    says otherwise is refused here, where the codecs' ``base + delta`` would broadcast a [64] base
    over a [64, 64] delta and return numbers made up of both, with no error."""
    if list(base_entry.shape) != list(entry.shape):
        raise CorruptObjectError(manifest_oid, f"tensor {entry.name!r} is a delta of shape {list(entry.shape)}, "
                                               f"but its base tensor has shape {list(base_entry.shape)}")


def _check_payload(enc: codecs.Encoded, entry: TensorEntry) -> None:
    """A delta payload must be for its manifest entry's tensor: the same shape and dtype (a
    ``codecs.CodecError`` if not). Sizes alone pass a float16 payload under a bfloat16 entry (the
    same bytes), and a lossy entry has no sha256 that would catch its numbers read as the other
    dtype afterwards."""
    if tuple(enc.shape) != tuple(entry.shape):
        raise codecs.CodecError(f"payload is for shape {list(enc.shape)}, the manifest says {entry.shape}")
    want = DTYPES[entry.dtype][0] if entry.dtype in DTYPES else None
    if want is None or enc.dtype != str(want).removeprefix("torch."):
        raise codecs.CodecError(f"payload is for dtype {enc.dtype}, the manifest says {entry.dtype}")


def _blame_unchecked_base(store: StoreView, base_manifest: str, base_entry: TensorEntry, unchecked: bool) -> None:
    """Where a delta's base was decoded without its sha256 check (``unchecked``) and the delta then
    failed: re-read the base checked, so a wrong base raises here, naming its own object."""
    if unchecked:
        tensor_bytes(store, base_manifest, base_entry)


def tensor(store: StoreView, ref: str, name: str, *, device: str | torch.device = "cpu") -> torch.Tensor:
    v = store.resolve(ref)
    entry = store.manifest(v.manifest).tensor_map().get(name)
    if entry is None:
        raise NotFoundError(f"{v.ref} has no tensor {name!r}")
    return tensor_on(store, v.manifest, entry, torch.device(device))


#: GPU decoding of lossy deltas is on unless DELTASTORE_GPU_DECODE=0 (then the CPU decodes and the
#: tensor is moved, as before)
GPU_DECODE_ENV = "DELTASTORE_GPU_DECODE"
_gpu_lock = threading.Lock()  # decoders run in worker threads; one at a time on the GPU


def gpu_decode_enabled() -> bool:
    return os.environ.get(GPU_DECODE_ENV, "").strip() != "0"


def tensor_on(store: StoreView, manifest_oid: str, entry: TensorEntry, device: torch.device, *,
              kernel: bool | None = None) -> torch.Tensor:
    """One tensor of a version on ``device``.

    On a GPU (``kernel`` None: when ``device`` is CUDA and GPU decoding is on) a lossy delta is
    decoded there: delta-come by ``kernels.decode.reconstruct_encoded`` (Triton dequant, one
    float32 GEMM, added to the base in float32 and rounded once, as the codec does on the CPU),
    other lossy codecs by their own ``reconstruct`` on the GPU tensors. Exact tensors and lossless
    deltas take the CPU path, whose bytes are checked against their sha256, and are moved.
    ``kernel=True`` on the CPU runs the same path with the kernels' torch reference ops (tests).

    Against the CPU decode: the same dequantized factors (bit for bit); the float32 GEMM sums in
    another order, so an element whose float32 value lies within ~1e-6 of a rounding boundary of
    its dtype may round the other way: at most one unit in the last place, on a small fraction of
    elements (tests/kernels/test_materialize_gpu.py states and checks the bound)."""
    if kernel is None:
        kernel = device.type == "cuda" and gpu_decode_enabled()
    if not kernel or entry.source != "delta" or entry.exact:
        return as_tensor(info_of(entry), tensor_bytes(store, manifest_oid, entry)).to(device)
    from .kernels.decode import reconstruct_encoded  # (imports Triton when installed: only on this path)

    man = store.manifest(manifest_oid)
    base_entry = store.manifest(man.base).tensor_map().get(entry.name) if man.base else None
    if base_entry is None:
        raise CorruptObjectError(manifest_oid, f"tensor {entry.name!r} is a delta, but its base lacks it")
    _check_delta_entry(manifest_oid, entry, base_entry)
    base_t = tensor_on(store, man.base, base_entry, device, kernel=kernel)
    try:
        enc = codecs.from_bytes(store.objects.get_view(entry.object, max_size=payload_bound(entry.nbytes)), copy=False)  # to the device
        _check_payload(enc, entry)
        with _gpu_lock, _full_fp32():
            out = reconstruct_encoded(enc, base_t)
            if out is None:  # no kernel decode for this payload: the codec's own, on this device
                out = codecs.codec_class(enc.codec).from_config(enc.params).reconstruct(enc, base_t)
    except codecs.CodecError as e:
        raise CorruptObjectError(entry.object, str(e)) from None
    except (TypeError, ValueError, KeyError, RuntimeError) as e:  # a payload the codec could not make sense of
        raise CorruptObjectError(entry.object, f"payload does not decode: {type(e).__name__}: {e}") from None
    if out.nbytes != entry.nbytes or tuple(out.shape) != tuple(entry.shape):
        raise CorruptObjectError(entry.object, f"tensor {entry.name!r} decodes to {out.nbytes} bytes {list(out.shape)}, "
                                               f"the manifest says {entry.nbytes} {list(entry.shape)}")
    return out


@contextlib.contextmanager
def _full_fp32() -> Iterator[None]:
    """float32 GEMMs in full precision (no TF32) while a delta is decoded, whatever the caller set:
    TF32 would move the result by ~1e-3 of the delta, far more than the stated bound."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def checkout_bytes(store: StoreView, manifest_oid: str, entry: TensorEntry, out: np.ndarray | None = None) -> np.ndarray:
    """A tensor's bytes for a checkout: a lossy delta is decoded on the GPU when one is present
    (and GPU decoding is on; see :func:`tensor_on` for the bound against the CPU decode), the
    rest (and everything on a machine without a GPU) as :func:`tensor_bytes` decodes it."""
    if entry.source != "delta" or entry.exact or not (gpu_decode_enabled() and torch.cuda.is_available()):
        return tensor_bytes(store, manifest_oid, entry, out=out, check_base=False)
    raw = tensor_on(store, manifest_oid, entry, torch.device("cuda"), kernel=True).cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    if out is None:
        return raw
    out[:] = raw
    return out


def iter_tensors(store: StoreView, ref: str, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in manifest order, decoded ``store.workers`` at a time; memory is bounded by
    that window, so a caller can stream a model larger than memory."""
    v = store.resolve(ref)
    entries = [e for _, e in store.manifest(v.manifest).tensors()]
    dev = torch.device(device)

    def load(entry: TensorEntry) -> tuple[str, torch.Tensor]:
        t = tensor_on(store, v.manifest, entry, dev)  # lossy deltas decoded on the GPU when dev is one
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return entry.name, t

    for name, t in ordered_map(load, entries, workers=store.workers, weight=lambda e: e.nbytes):
        yield name, t.to(device)


def dtype_code(dtype: str | torch.dtype) -> str:
    """A safetensors float dtype code from a torch dtype or a name users type (bf16, fp16, ...)."""
    if isinstance(dtype, torch.dtype):
        code = TORCH_TO_CODE.get(dtype)
    else:
        aliases = {"bf16": "BF16", "bfloat16": "BF16", "fp16": "F16", "float16": "F16", "half": "F16",
                   "fp32": "F32", "float32": "F32", "float": "F32", "fp64": "F64", "float64": "F64"}
        code = aliases.get(dtype.lower(), dtype.upper() if dtype.upper() in FLOAT_CODES else None)
    if code not in FLOAT_CODES:
        raise BadInputError(f"--dtype must be one of bf16, fp16, fp32, fp64; got {dtype!r}")
    return code


def _header_metadata(raw: bytes) -> dict[str, str] | None:
    try:
        meta = json.loads(raw[8:]).get("__metadata__")
    except (ValueError, AttributeError):
        return None
    return meta if isinstance(meta, dict) else None


def safe_dest(out: Path, rel: str) -> Path:
    """``out / rel`` for a path read from a manifest, refused unless it is a plain relative path
    that stays inside ``out`` (no absolute path, ``..``, empty or control-character parts) and no
    directory on the way is a symlink: a manifest from a shared bucket must not write elsewhere."""
    if not isinstance(rel, str) or not rel or rel.startswith(("/", "\\")) or "\\" in rel or "\x00" in rel:
        raise BadInputError(f"refusing to write {rel!r}: not a relative path")
    parts = rel.split("/")
    if any(p in ("", ".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in p) for p in parts):
        raise BadInputError(f"refusing to write {rel!r}: a manifest path must not hold '..', '.', empty or control-character parts")
    dest = out
    for p in parts:
        dest = dest / p
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise BadInputError(f"refusing to write through the symlink {dest}")
    return dest


@frozen_heap()
def checkout(store: StoreView, ref: str, out: str | Path, *, dtype: str | torch.dtype | None = None,
             progress: Progress | None = None, overwrite: bool = False) -> CheckoutResult:
    """Write a version as a Hugging Face directory.

    Every tensor of an exact version is verified against the sha256 it was added with as it is
    decoded (in parallel), the header and other files against their object ids, and each file's
    size against the manifest; a file is renamed into place only when whole. ``dtype`` converts
    floating tensors on the way out."""
    progress = progress or no_progress
    t0 = time.perf_counter()
    v = store.resolve(ref)
    man = store.manifest(v.manifest)
    out = Path(out)
    target = dtype_code(dtype) if dtype is not None else None
    if out.is_symlink():
        raise BadInputError(f"{out} is a symlink; give a real directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BadInputError(f"{out} exists and is not empty; pick a new directory (or pass overwrite=True / --force)")
    dests = [safe_dest(out, f.path) for f in man.files]
    if len(set(dests)) != len(dests):
        raise CorruptObjectError(v.manifest, "the manifest lists one path twice")
    out.mkdir(parents=True, exist_ok=True)
    if store.workers >= WARM_MIN_WORKERS:
        warm_codecs((t.codec, t.dtype) for _, t in man.tensors() if t.source == "delta")
    total = man.logical_bytes
    state = {"done": 0, "written": 0}
    progress("checkout", 0, total)
    taken = set(dests)
    for f, dest in zip(man.files, dests):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(dest, taken)
        try:
            with open(tmp, "w+b") as fh:  # read+write: tensors are decoded into an mmap of it
                _write_file(store, v.manifest, f, fh, target, state, progress, total)
            if target is None and os.path.getsize(tmp) != f.size:
                raise CorruptObjectError(f.header or f.object or v.manifest,
                                         f"{f.path} came out {os.path.getsize(tmp)} bytes, not the {f.size} it was added with")
            os.replace(tmp, dest)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
    return CheckoutResult(ref=v.ref, out=str(out), files=len(man.files), bytes_written=state["written"],
                          exact=target is None and man.exact, seconds=time.perf_counter() - t0)


#: warm the codecs' kernels (:func:`warm_codecs`) only from this many workers: the load then runs
#: alone before the workers start, where on the first call it overlapped the other workers' reads
#: and hashing. Measured on the dev VM's 2 cores (quiet, alternating pairs, 0.93 GB fine-tune): with
#: 2 workers warm was 0.3-0.7 s slower on every add and on 2 of 3 checkouts; with 16 threads it was
#: faster in 6 of 6 pairs, and on the H200 machine the first-call waits were 3 s (4 threads) to 54 s
#: (16) of the threads' summed time (benchmarks/results/scaling_h200.md, scaling_devvm_2workers.md)
WARM_MIN_WORKERS = 3


def warm_codecs(deltas: Iterable[tuple[str | None, str]]) -> None:
    """Let the codecs of these deltas, (codec id, safetensors dtype code) each, load what their
    encode and decode load on a first call (``Codec.warm``: the lossless codec's compiled kernels)
    in this thread, before an add's or a checkout's workers start: otherwise every worker reaching
    its first delta waits on the one loading them (16 cores: most of a fine-tune's first second).
    A codec id the registry does not know is left for the decode to refuse.
    ``DELTASTORE_WARM=0``: load on first use instead (as before)."""
    if os.environ.get("DELTASTORE_WARM", "").strip() == "0":
        return
    by_codec: dict[str, set[torch.dtype]] = {}
    for cid, code in deltas:
        if cid and code in DTYPES:
            by_codec.setdefault(cid, set()).add(DTYPES[code][0])
    for cid, dtypes in by_codec.items():
        try:
            cls = codecs.codec_class(cid)
        except codecs.CodecError:
            continue
        if cls.warm is not codecs.Codec.warm:  # (constructing the others is for nothing)
            cls().warm(dtypes)


def warm_codecs_beside(deltas: Iterable[tuple[str | None, str]]) -> threading.Event:
    """:func:`warm_codecs` on a thread of its own; the returned event is set once it is over
    (loaded, or failed: a kernel that did not load then loads, or fails, on its first call).

    For an add: its workers read and hash their first tensors meanwhile (the read and SHA-256 run
    with the GIL released) and wait on the event before their first decode, where before every
    core but one sat idle for the load (~1 s on the H200 machine's 16 cores, one thread running;
    scaling_h200.md, thirteenth session). Workers that meet a kernel before it is loaded must not
    run beside the load: that is what cost seconds of GIL hand-offs before :func:`warm_codecs`."""
    done = threading.Event()
    deltas = list(deltas)

    def run() -> None:
        try:
            warm_codecs(deltas)
        except Exception:  # noqa: BLE001 - an optimisation only: the first real call reports it
            pass
        finally:
            done.set()

    threading.Thread(target=run, name="deltastore-warm", daemon=True).start()
    return done


def _write_file(store: StoreView, manifest_oid: str, f: FileEntry, fh, target: str | None, state: dict,  # noqa: ANN001
                progress: Progress, total: int) -> None:
    if f.kind == "blob":
        data = store.objects.get(f.object, max_size=f.size)  # no more than the manifest says
        fh.write(data)
        state["written"] += len(data)
        state["done"] += f.size
        progress("checkout", state["done"], total)
        return
    convert = target is not None and any(t.dtype in FLOAT_CODES and t.dtype != target for t in f.tensors)
    head = store.objects.get(f.header, max_size=f.size)
    if convert:
        new = [(t.name, target if t.dtype in FLOAT_CODES else t.dtype, tuple(t.shape)) for t in f.tensors]
        head, _ = build_header(new, _header_metadata(head))
    fh.write(head)
    fh.flush()
    state["written"] += len(head)

    def converts(t: TensorEntry) -> bool:
        return convert and t.dtype in FLOAT_CODES and t.dtype != target

    def decode(t: TensorEntry, out: np.ndarray | None = None) -> np.ndarray:
        if not converts(t):
            return checkout_bytes(store, manifest_oid, t, out=out)
        tt = as_tensor(info_of(t), checkout_bytes(store, manifest_oid, t)).to(DTYPES[target][0])
        raw = tt.contiguous().reshape(-1).view(torch.uint8).numpy()
        if out is None:
            return raw
        out[:] = raw
        return out

    sizes = [math.prod(t.shape) * DTYPES[target][1] if converts(t) else t.nbytes for t in f.tensors]
    starts = np.cumsum([len(head)] + sizes).tolist()
    fd = fh.fileno()
    if sizes and _mappable(fd, starts[-1], f.path):
        # every worker writes its tensor at its own place in the file: the file is written in parallel,
        # with no copy through a single writing thread; a tensor object by pwrite a chunk at a time
        # (_pwrite_tensor), a delta decoded into the worker's reused buffer and written by pwrite, both
        # where pwrite is wanted (_pwrite_wanted: at most 2 workers, measured); else into a mapped window
        # a delta decoded into a buffer handed from one tensor to the next and written by pwrite reuses
        # pages already mapped, where a window has the kernel allocate and zero each new page first:
        # dev VM, the dense 40-step SmolLM2 fine-tune's checkout 278-291 -> 396-416 MB/s (2 workers,
        # medians of 5 alternating rounds, benchmarks/probe_delta_write.py --store)
        pool = BufferPool()
        by_pwrite = _pwrite_wanted(store)

        def decode_into(i: int) -> int:
            t = f.tensors[i]
            if not sizes[i] or (not converts(t) and _pwrite_tensor(store, manifest_oid, t, fd, starts[i])):
                return sizes[i]
            if by_pwrite and t.source == "delta":  # decoded into a pooled buffer, then written
                buf = pool.take(sizes[i])
                try:
                    pwrite_all(fd, memoryview(decode(t, buf)), starts[i])
                finally:
                    pool.give(buf)
            else:
                with _Window(fd, starts[i], sizes[i]) as window:
                    decode(t, window.array)
            return sizes[i]

        # held=False where the workers decode into windows: results hold no bytes, so the tensors behind
        # a large one start as workers free up (16 cores: checkout base 1.69 -> 2.22 GB/s). Where tensor
        # objects are written by pwrite (2 workers) it measured slower (dev VM: 0.360 vs 0.476 GB/s,
        # medians of 3 rounds; scaling_devvm_2workers.md), so the window keeps finished tensors there.
        # Largest first either way (pipeline.largest_first): in file order the pwrite checkout ended
        # with the lm_head (last in the file, 262 MB) running alone on one of 2 cores for its last
        # 1.5 s; started first, checkout base 0.344 -> 0.550 GB/s on the dev VM (medians of 4
        # alternating rounds, every round faster; scaling_devvm_2workers.md, sixteenth session)
        held = _pwrite_on(store)
        order = largest_first(sizes)
        done = ordered_map(decode_into, order, workers=store.workers, weight=lambda i: sizes[i], held=held)
        for i, n in zip(order, done):
            state["written"] += n
            state["done"] += f.tensors[i].nbytes
            progress("checkout", state["done"], total)
        return
    for t, raw in zip(f.tensors, ordered_map(decode, f.tensors, workers=store.workers, weight=lambda e: e.nbytes)):
        fh.write(memoryview(raw))
        state["written"] += raw.size
        state["done"] += t.nbytes
        progress("checkout", state["done"], total)


#: tensor objects are written chunk by chunk with pwrite (:func:`_pwrite_tensor`), and deltas decoded
#: into a reused buffer (:class:`~.pipeline.BufferPool`) and written with pwrite: 1 always, 0 never (both
#: go through mapped windows of the file); unset, where the checkout runs at most
#: :data:`PWRITE_MAX_WORKERS` workers
PWRITE_ENV = "DELTASTORE_PWRITE_TENSORS"
#: Measured (issue 7, b010d84): on the dev VM's 2 cores pwrite was the faster (checkout base 0.352 vs
#: 0.240 GB/s, medians of 2 rounds at load 3.2-3.6; 1-27% less CPU a GB in paired profiles); on the
#: H200 machine's 16 Xeon cores the window was the faster at every worker count (16: 2.000 vs 1.774
#: GB/s, 8: 1.877 vs 1.358, 4: 1.370 vs 1.040, 2: 0.765 vs 0.708; one quiet run each), where the window
#: also decodes each tensor's chunks in parallel and 16 writers do not queue on the file's inode lock.
#: So the default follows the worker count, a proxy for the two machines measured, not a law.
PWRITE_MAX_WORKERS = 2


def _pwrite_wanted(store: StoreView) -> bool:
    """Whether this checkout writes by pwrite rather than through mapped windows:
    ``DELTASTORE_PWRITE_TENSORS=1``, or unset and at most :data:`PWRITE_MAX_WORKERS` workers."""
    want = os.environ.get(PWRITE_ENV, "").strip()
    return want != "0" and (want == "1" or store.workers <= PWRITE_MAX_WORKERS)


def _pwrite_on(store: StoreView) -> bool:
    """Whether this checkout writes tensor objects by pwrite (:func:`_pwrite_tensor`): the
    store's own object database, and :func:`_pwrite_wanted`."""
    return isinstance(store.objects, ObjectDB) and _pwrite_wanted(store)


def _pwrite_tensor(store: StoreView, manifest_oid: str, entry: TensorEntry, fd: int, offset: int) -> bool:
    """A tensor stored as a tensor object (a base's, or a fine-tune's unchanged tensor, which is its
    base's) written to ``fd`` at ``offset`` by ``ObjectDB.write_tensor``: decoded, hashed and
    written a stream chunk at a time, each chunk still in cache, instead of decoded into a mapped
    window whose pages the kernel first allocates and zeroes. Verified against the object id (the
    tensor's sha256) as :func:`tensor_bytes` does. False where it does not apply (a delta, another
    object store, another coding, more workers than :data:`PWRITE_MAX_WORKERS` unless
    ``DELTASTORE_PWRITE_TENSORS=1``, or ``=0``): the caller decodes into a window;
    entries that do not add up are left to :func:`tensor_bytes` to refuse, with its errors."""
    if not _pwrite_on(store):
        return False
    try:
        _, entry = stored_entry(store, manifest_oid, entry)
    except CorruptObjectError:
        return False
    if entry.source != "tensor" or entry.object != "sha256:" + entry.sha256:
        return False
    return store.objects.write_tensor(entry.object, entry.nbytes, fd, offset)


def _temp_name(dest: Path, taken: set[Path]) -> Path:
    """Where ``dest`` is written before it is renamed into place: a hidden name beside it that no
    file of the version has (a folder added with a leftover ``.x.deltastore-tmp`` in it lists one,
    which the plain name would have overwritten and then renamed away)."""
    tmp = dest.with_name(f".{dest.name}.deltastore-tmp")
    k = 0
    while tmp in taken:
        k += 1
        tmp = dest.with_name(f".{dest.name}.deltastore-tmp{k}")
    return tmp


def _mappable(fd: int, size: int, what: str = "the file") -> bool:
    """Give the file its final ``size`` with its blocks reserved, so writes through a mapping
    cannot meet a full disk (which would be SIGBUS, not an error); False where this file system
    cannot reserve or map it, or ``DELTASTORE_MAP_WRITES=0`` says not to (the caller then writes
    in order through the file). A full disk raises here, as a write would."""
    if os.environ.get("DELTASTORE_MAP_WRITES", "").strip() == "0" or not hasattr(os, "posix_fallocate"):
        return False  # asked not to; or no way to reserve the blocks first (macOS)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise BadInputError(f"no room to write {what} ({size:,} bytes): {e.strerror}; free space or check out elsewhere") from None
        return False
    try:
        mmap.mmap(fd, min(size, mmap.PAGESIZE)).close()
    except (OSError, ValueError):
        return False
    return True


#: pre-fault a checkout window's pages in the mmap call where the platform has it (Linux)
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _libc_mmap():  # noqa: ANN202
    """libc's ``mmap`` and ``munmap`` through ctypes (which calls them with the GIL released), or
    None where they cannot be had (not Linux; a libc without them). Python 3.11's ``mmap.mmap``
    holds the GIL in its mmap(2) call, so a MAP_POPULATE window held it while the kernel allocated
    and zeroed every page (0.8 s of a 0.93 GB fine-tune checkout's 2.0 GIL-held s on the dev VM,
    benchmarks/results/gil_profile_devvm.md), and its close holds it while munmap tears the pages down."""
    global _LIBC
    if _LIBC is False:
        _LIBC = None
        if _POPULATE and os.environ.get("DELTASTORE_CTYPES_MMAP", "").strip() != "0":
            mm = libc_function("mmap", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                               ctypes.c_int, ctypes.c_long)
            um = libc_function("munmap", ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
            if mm is not None and um is not None:
                _LIBC = (mm, um, ctypes.c_void_p(-1).value, ctypes.get_errno)
    return _LIBC


_LIBC: object = False  # not looked up yet


class _Mapped:
    """The owner of a raw shared mapping, which numpy arrays over it keep alive as their base
    (views of views too: numpy takes the first non-array base); unmapped when the last is gone."""

    __slots__ = ("__array_interface__", "__weakref__")

    def __init__(self, addr: int, n: int):
        self.__array_interface__ = {"shape": (n,), "typestr": "|u1", "data": (addr, False), "version": 3}


class _Window:
    """A writable uint8 view of bytes ``[start, start + n)`` of an open file (a shared mapping),
    unmapped on exit so a checkout's resident memory stays at the tensors in flight (or, where a
    view is still held, by an exception's traceback, once that is collected)."""

    def __init__(self, fd: int, start: int, n: int):
        lo = start - start % mmap.ALLOCATIONGRANULARITY
        # MAP_POPULATE: the kernel allocates and maps the window's pages in the mmap call instead of
        # one fault a page during the decode: checkout of a 7B-shaped base 1.57 -> 1.87 GB/s on the
        # H200's 16 cores (benchmarks/probe_store_ceilings.py, results/raw_h200/ceilings_dc98641.md).
        # The call goes through ctypes (GIL released: _libc_mmap) where it can; not
        # madvise(MADV_POPULATE_WRITE): Python's mmap.madvise holds the GIL for the whole call.
        self._map: mmap.mmap | None = None
        libc = _libc_mmap()
        if libc is None:
            self._map = mmap.mmap(fd, start + n - lo, flags=mmap.MAP_SHARED | _POPULATE, offset=lo)
            self.array: np.ndarray | None = np.frombuffer(self._map, dtype=np.uint8, count=n, offset=start - lo)
            return
        mm, um, failed, get_errno = libc
        length = start + n - lo
        addr = mm(None, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | _POPULATE, fd, lo)
        if addr is None or addr == failed:
            e = get_errno()
            raise OSError(e, os.strerror(e))
        owner = _Mapped(addr + start - lo, n)
        weakref.finalize(owner, um, addr, length)  # munmap (GIL released) once no array views it
        self.array = np.asarray(owner)

    def __enter__(self) -> "_Window":
        return self

    def __exit__(self, *exc: object) -> None:
        self.array = None  # the ctypes mapping is unmapped here, unless a view is still held
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view still held (by an exception's traceback): unmapped when collected
                pass


def diff(store: StoreView, a: str, b: str) -> list[TensorDiff]:
    """Tensors that differ between two versions, and by how much (computed in float32)."""
    va, vb = store.resolve(a), store.resolve(b)
    ma, mb = store.manifest(va.manifest).tensor_map(), store.manifest(vb.manifest).tensor_map()
    out: list[TensorDiff] = []
    for name, ea in ma.items():
        eb = mb.get(name)
        if eb is None:
            out.append(TensorDiff(name, "only-a", shape_a=ea.shape))
            continue
        if ea.shape != eb.shape:
            out.append(TensorDiff(name, "shape", shape_a=ea.shape, shape_b=eb.shape))
            continue
        if ea.sha256 == eb.sha256 and ea.exact and eb.exact and ea.dtype == eb.dtype:
            continue
        ta = as_tensor(info_of(ea), tensor_bytes(store, va.manifest, ea))
        tb = as_tensor(info_of(eb), tensor_bytes(store, vb.manifest, eb))
        if ea.dtype == eb.dtype and torch.equal(ta.reshape(-1).view(torch.uint8), tb.reshape(-1).view(torch.uint8)):
            continue
        fa, fb = ta.to(torch.float32), tb.to(torch.float32)
        d = fb - fa
        na = float(fa.norm())
        out.append(TensorDiff(name, "changed" if ea.dtype == eb.dtype else "dtype", shape_a=ea.shape, shape_b=eb.shape,
                              max_abs=float(d.abs().max()) if d.numel() else 0.0,
                              rel_fro=float(d.norm()) / na if na else float("inf"),
                              changed_frac=float((d != 0).float().mean()) if d.numel() else 0.0))
    for name, eb in mb.items():
        if name not in ma:
            out.append(TensorDiff(name, "only-b", shape_b=eb.shape))
    return out

