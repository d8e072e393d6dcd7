"""Manifests: one model version as canonical JSON, stored as an object.

A manifest lists the version's files in order. A plain file points at a blob. A safetensors file
keeps its header verbatim (a blob) and lists its tensors in data order, each with where its bytes
come from:

- ``tensor``: a tensor object holding the bytes losslessly;
- ``delta``: a codec payload applied to the base version's tensor of the same name;
- ``base``: the base version's tensor, unchanged (costs no object).

``sha256`` is the hash of the bytes that were added (file or tensor); ``exact`` says whether the
store gives those bytes back (lossless) or an approximation (lossy codec). Canonical JSON (sorted
keys, no spaces) makes equal versions hash to the same manifest id.

A safetensors file's own ``sha256`` is optional (format 2): its bytes are already pinned by the
verbatim header object and every tensor's sha256, which add computes on all cores, whereas the
file's SHA-256 is one serial pass that bounds add at one core's hashing speed (about 1.2 GB/s on
a 16-core Xeon: benchmarks/results/raw_h200/ceilings_dc98641.md). Add records it only when asked
(``file_sha256=True``). A manifest in which every file has its sha256 is written as format 1,
byte for byte what earlier versions wrote, so they still read it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator

from .errors import CorruptObjectError
from .safetensors_io import DTYPES

FORMAT = 2  #: the newest format this deltastore reads
FORMATS = (1, 2)  #: 2: a safetensors file's sha256 may be null
#: bounds on what a manifest may claim, checked before anything is allocated from it
MAX_PATH = 4096
#: one part of a path (a file or folder name): no file system an add reads from holds a longer one
MAX_PART = 255
MAX_NAME = 4096
MAX_DIMS = 16
MAX_NBYTES = 1 << 48
# \Z, not $: Python's $ also matches before a final newline ("sha256:<hex>\n" would pass)
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_OID = re.compile(r"^sha256:[0-9a-f]{64}\Z")


def is_text(s: str) -> bool:
    """Whether ``s`` is text a database, a file name or a terminal takes: it encodes as UTF-8.
    JSON's ``"\\ud800"`` is valid and reads as a lone surrogate, which does not: a record holding
    one failed a pull's commit and ``db rebuild`` with an internal UnicodeEncodeError."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_rel_path(rel: object) -> str:
    """A path read from the store that may be joined under an output directory: relative, '/'
    separated, UTF-8 text, no ``..``, ``.`` or empty parts, no backslash, no control characters,
    no part longer than a file name can be. A lone surrogate (JSON's ``"\\ud800"``, valid JSON) is
    no file name: accepted, it failed every checkout of the version and the mount's listing of it,
    long after the pull that took it. (Lengths stay in characters: a file system that counts them,
    APFS or NTFS, holds a name of 255 non-ASCII ones, which an add there may have stored.)"""
    if not isinstance(rel, str) or not rel or len(rel) > MAX_PATH:
        raise ValueError(f"path {rel!r} is not a non-empty string of at most {MAX_PATH} characters")
    if not is_text(rel):
        raise ValueError(f"path {rel!r:.300} is not UTF-8 text (it holds a lone surrogate)")
    if rel.startswith("/") or "\\" in rel:
        raise ValueError(f"path {rel!r} is not relative")
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"path {rel!r} has an empty, '.' or '..' part")
        if any(ord(c) < 32 or ord(c) == 127 for c in part):
            raise ValueError(f"path {rel!r} has control characters")
        if len(part) > MAX_PART:
            raise ValueError(f"path {rel[:200]!r} has a part longer than {MAX_PART} characters")
    return rel


class _Bad(ValueError):
    pass


def _want(cond: bool, why: str) -> None:
    if not cond:
        raise _Bad(why)


def _int(v: object, what: str, lo: int = 0, hi: int = MAX_NBYTES) -> int:
    _want(type(v) is int and lo <= v <= hi, f"{what} must be an integer in [{lo}, {hi}], not {v!r:.80}")
    return v  # type: ignore[return-value]


def _oid(v: object, what: str, optional: bool = True) -> str | None:
    if v is None and optional:
        return None
    _want(isinstance(v, str) and bool(_OID.match(v)), f"{what} is not an object id: {v!r:.80}")
    return v  # type: ignore[return-value]


def _keys(d: object, cls: type, what: str) -> dict:
    _want(isinstance(d, dict), f"{what} is not a JSON object")
    known = {f.name for f in fields(cls)}
    extra = sorted(set(d) - known)  # type: ignore[arg-type]
    _want(not extra, f"{what} has fields this deltastore does not know: {', '.join(map(str, extra))[:200]}")
    return d  # type: ignore[return-value]


def _tensor(d: object, where: str) -> "TensorEntry":
    d = _keys(d, TensorEntry, where)
    name = d.get("name")
    _want(isinstance(name, str) and 0 < len(name) <= MAX_NAME, f"{where}: tensor name {name!r:.80} is not a string")
    where = f"{where} tensor {name[:100]!r}"
    dtype = d.get("dtype")
    _want(isinstance(dtype, str) and dtype in DTYPES, f"{where}: unknown dtype {dtype!r:.40}")
    shape = d.get("shape")
    _want(isinstance(shape, list) and len(shape) <= MAX_DIMS, f"{where}: shape is not a list of at most {MAX_DIMS} sizes")
    shape = [_int(x, f"{where}: a dimension") for x in shape]
    nbytes = _int(d.get("nbytes"), f"{where}: nbytes")
    _want(math.prod(shape) * DTYPES[dtype][1] == nbytes, f"{where}: nbytes {nbytes} is not what shape {shape} of {dtype} takes")
    sha = d.get("sha256")
    _want(isinstance(sha, str) and bool(_HEX64.match(sha)), f"{where}: sha256 is not 64 hex digits")
    source = d.get("source")
    _want(source in ("tensor", "delta", "base"), f"{where}: unknown source {source!r:.40}")
    obj = _oid(d.get("object"), f"{where}: object")
    codec = d.get("codec")
    _want(codec is None or (isinstance(codec, str) and len(codec) <= 100), f"{where}: codec is not a name")
    exact = d.get("exact", True)
    _want(isinstance(exact, bool), f"{where}: exact is not true/false")
    rel = d.get("rel_error")
    # any float, as before (NaN and Infinity included: json writes and reads them), and integers a
    # float holds (JSON's have no bound: float() of 10**400 raised OverflowError)
    _want(rel is None or type(rel) is float or (type(rel) is int and abs(rel) <= 1e300), f"{where}: rel_error is not a number")
    if source == "tensor":
        _want(obj == "sha256:" + sha, f"{where}: a tensor object is named by the tensor's sha256")
    elif source == "delta":
        _want(obj is not None and codec is not None, f"{where}: a delta names its object and codec")
    else:
        _want(obj is None, f"{where}: a base tensor names no object")
    return TensorEntry(name=name, dtype=dtype, shape=shape, nbytes=nbytes, sha256=sha, source=source, object=obj,
                       codec=codec, exact=exact, rel_error=None if rel is None else float(rel))


def _file(d: object, i: int, fmt: int) -> "FileEntry":
    d = _keys(d, FileEntry, f"file {i}")
    try:
        path = check_rel_path(d.get("path"))
    except ValueError as e:
        raise _Bad(f"file {i}: {e}") from None
    where = f"file {path[:200]!r}"
    kind = d.get("kind")
    _want(kind in ("blob", "safetensors"), f"{where}: unknown kind {kind!r:.40}")
    size = _int(d.get("size"), f"{where}: size")
    sha = d.get("sha256")
    _want((sha is None and kind == "safetensors" and fmt >= 2) or (isinstance(sha, str) and bool(_HEX64.match(sha))),
          f"{where}: sha256 is not 64 hex digits")
    obj = _oid(d.get("object"), f"{where}: object")
    header = _oid(d.get("header"), f"{where}: header")
    raw_tensors = d.get("tensors", [])
    _want(isinstance(raw_tensors, list), f"{where}: tensors is not a list")
    tensors = [_tensor(t, where) for t in raw_tensors]
    if kind == "blob":
        _want(obj is not None and header is None and not tensors, f"{where}: a plain file names one object and no tensors")
    else:
        _want(header is not None and obj is None, f"{where}: a safetensors file names its header object")
        _want(size >= 8 + sum(t.nbytes for t in tensors), f"{where}: size {size} is less than its tensors take")
    return FileEntry(path=path, kind=kind, size=size, sha256=sha, object=obj, header=header, tensors=tensors)


@dataclass
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype code
    shape: list[int]
    nbytes: int
    sha256: str  # hex of the bytes that were added
    source: str  # "tensor" | "delta" | "base"
    object: str | None = None  # tensor or delta object id
    codec: str | None = None  # for deltas
    exact: bool = True
    rel_error: float | None = None  # lossy deltas: ||D - D^|| / ||D||, measured when added


@dataclass
class FileEntry:
    path: str
    kind: str  # "blob" | "safetensors"
    size: int
    sha256: str | None  # hex of the file's bytes; None where add was not asked for it (safetensors files)
    object: str | None = None  # blob id
    header: str | None = None  # blob id of the verbatim safetensors header
    tensors: list[TensorEntry] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return all(t.exact for t in self.tensors)


def payload_bound(nbytes: int) -> int:
    """The most bytes a delta payload of a tensor of ``nbytes`` decodes to: four times the tensor and
    1 MiB (generous: a full-rank low-rank pair of an fp16 factor each is twice a bf16 tensor, a
    lossless payload of incompressible bytes its stream, chunk tables and counts). What a reader of
    one bounds its read by: a file far larger is refused unread."""
    return 4 * nbytes + (1 << 20)


@dataclass
class Manifest:
    files: list[FileEntry]
    base: str | None = None  # the base version's manifest id
    codec: dict[str, Any] = field(default_factory=dict)  # config of the codec asked for
    format: int = 0  # 0: the oldest format that holds these files (set on construction)

    def __post_init__(self) -> None:
        if not self.format:
            self.format = 1 if all(f.sha256 is not None for f in self.files) else 2

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | bytearray | memoryview | str, oid: str | None = None) -> "Manifest":
        """Parse and check a manifest read from the store: every field's type, every path (see
        :func:`check_rel_path`), every size and shape, unique paths and tensor names. Anything
        else is a :class:`CorruptObjectError` naming ``oid``, never a KeyError or TypeError."""
        try:
            d = json.loads(bytes(data) if not isinstance(data, str) else data)
            d = _keys(d, Manifest, "manifest")
            fmt = d.get("format")
            _want(type(fmt) is int and fmt in FORMATS,
                  f"format {fmt!r:.40} is not one this deltastore reads ({', '.join(map(str, FORMATS))})")
            raw_files = d.get("files")
            _want(isinstance(raw_files, list), "files is not a list")
            files = [_file(f, i, fmt) for i, f in enumerate(raw_files)]
            base = _oid(d.get("base"), "base")
            codec = d.get("codec", {})
            _want(isinstance(codec, dict), "codec is not a JSON object")
            paths: set[str] = set()
            names: set[str] = set()
            for f in files:
                _want(f.path not in paths, f"path {f.path[:200]!r} is listed twice")
                paths.add(f.path)
            # a file whose name is another file's folder ("a" and "a/b"): no checkout can write both.
            # With "/" sorted below every other character (paths hold no control characters), a
            # folder's files come right after it: one pass over neighbours, whatever the depth
            keys = sorted(p.replace("/", "\0") for p in paths)
            for a, b in zip(keys, keys[1:]):
                _want(not b.startswith(a + "\0"),
                      f"path {a.replace(chr(0), '/')[:200]!r} is a file and the folder of {b.replace(chr(0), '/')[:200]!r}")
            for f in files:
                for t in f.tensors:
                    _want(t.name not in names, f"tensor {t.name[:100]!r} is listed twice")
                    names.add(t.name)
                    _want(t.source == "tensor" or base is not None, f"tensor {t.name[:100]!r} needs a base, and there is none")
        except (_Bad, ValueError, RecursionError, TypeError) as e:  # JSON and Unicode errors are ValueErrors
            raise CorruptObjectError(oid or "(manifest)", f"not a valid manifest: {e}") from None
        return cls(files=files, base=base, codec=codec, format=fmt)

    def tensors(self) -> Iterator[tuple[FileEntry, TensorEntry]]:
        for f in self.files:
            for t in f.tensors:
                yield f, t

    def tensor_map(self) -> dict[str, TensorEntry]:
        """Entries by tensor name; built once, since add and checkout look up every tensor's base
        entry by name (manifests are not modified after they are read or built)."""
        tmap = self.__dict__.get("_tensor_map")
        if tmap is None:
            tmap = self.__dict__["_tensor_map"] = {t.name: t for _, t in self.tensors()}
        return tmap

    def object_ids(self) -> set[str]:
        """Objects this manifest itself names (not its base's)."""
        out: set[str] = set()
        for f in self.files:
            for oid in (f.object, f.header):
                if oid:
                    out.add(oid)
            for t in f.tensors:
                if t.object:
                    out.add(t.object)
        return out

    def object_sizes(self) -> dict[str, int]:
        """What each object this manifest names decodes to, at most: a blob or a header its file's
        size, a tensor object its tensor's bytes, a delta payload :func:`payload_bound` of them.
        Readers bound what they read by it (``maintenance.verify``): a file far larger is refused
        unread."""
        out: dict[str, int] = {}
        for f in self.files:
            for oid in (f.object, f.header):
                if oid:
                    out[oid] = max(out.get(oid, 0), f.size)
            for t in f.tensors:
                if t.object:
                    out[t.object] = max(out.get(t.object, 0), t.nbytes if t.source == "tensor" else payload_bound(t.nbytes))
        return out

    def object_kinds(self, manifest_oid: str) -> dict[str, str]:
        """The kind of every object this manifest names (and of the manifest itself), for the
        catalog's object index."""
        kinds = {manifest_oid: "manifest"}
        for f in self.files:
            for oid in (f.object, f.header):
                if oid:
                    kinds[oid] = "blob"
            for t in f.tensors:
                if t.object:
                    kinds[t.object] = "tensor" if t.source == "tensor" else "delta"
        return kinds

    @property
    def logical_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def exact(self) -> bool:
        return all(f.exact for f in self.files)
