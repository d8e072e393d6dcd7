"""Version and tag records on the object backend, so the catalog can be rebuilt from it alone.

The SQL catalog is the index everyone queries; these small JSON files beside the objects are its
backup: ``catalog/versions/<model>/v<N>.json`` (what the catalog's version row says) and
``catalog/tags/<model>/<tag>.json``, and ``catalog/retired/<model>/v<N>.json`` for each number
``rm`` retired (numbers are never handed out twice, ``catalog.RetiredNumber``; without these a
rebuilt catalog would give a removed number to the next add). A version's record is written *before* the catalog
transaction that creates the version commits (after its row has taken the version number, which
no other writer can take until it ends), so every committed version has its record; a crash in
between leaves a record with no version, which the next add of that number overwrites and
``gc`` (which excludes adds) removes. Records are removed with ``rm``/``untag``.
``deltastore db rebuild`` fills an empty catalog from them and the manifests they name (a lost
SQLite file, a new PostgreSQL server, a second team's catalog).

Records come from a shared bucket and are not trusted: :func:`parse_version` and
:func:`parse_tag` check every field and raise :class:`CorruptRecordError`.

**Whose record is it.** Several catalogs may share one objects location (a team's PostgreSQL
catalog on ``s3://team/objects`` and someone's local home run with ``--objects-url`` on it), and
each sees only its own versions. So a version record (format 2) names the catalog that wrote it
(``catalog``: the UUID in that catalog's ``catalog_identity`` table, migration 0002). gc keeps every
object another catalog's records reach (:func:`foreign_reach`) and :func:`reconcile` touches only
its own records. A record of format 1 (no owner: written before format 2) counts as the reader's
own, as every record did then; a format-2 record whose ``catalog`` is null belongs to no catalog
(a bare remote's, once transfer.py writes them with :func:`encode_version`): every catalog keeps
its objects and none removes it. ``db rebuild`` *adopts* what it imports: it rewrites each record it
made a version from with its own id (so the records keep matching the catalog that answers for
them). Records are keyed by model and number, not by catalog: two catalogs that share a bucket must
not use the same model names, and an add that would overwrite another catalog's record is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import weakref
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any, Iterable

from sqlalchemy import func, select

from .backend import TMP_PREFIX, Backend
from .catalog import Lineage as LineageRow, Model, ObjectRow, RetiredNumber, Tag, Version, VersionObject, catalog_id
from .crash import crash_point
from .errors import BadInputError, BadNameError, ConflictError, CorruptObjectError, CorruptRecordError, ObjectMissingError
from .manifest import Manifest, is_text
from .objects import MAX_MANIFEST, ObjectDB
from .protocols import StoreView
from .refs import check_name
from .results import VersionInfo

PREFIX = "catalog"
#: the version record format this deltastore writes (1: no owner; 2: ``format`` and ``catalog``)
FORMAT = 2
#: how many base manifests gc follows from one record (a base chain is short: bases, then skip-deltas)
MAX_CHAIN = 10_000
# \Z, not $: Python's $ also matches before a final newline ("sha256:<hex>\n" would pass)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
#: a record is a few KiB; one larger than this is not ours
MAX_RECORD = 1 << 20
_OID = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_BASE_REF = re.compile(r"^(.+)@v([1-9][0-9]{0,9})\Z")
_VKEY = re.compile(r"^catalog/versions/([^/]+)/v([1-9][0-9]{0,9})\.json\Z")
#: a file in a model's versions folder that could be a record (ASCII digits to the end, as a REF's
#: version: str.isdigit took 'v\u0661.json', whose record then did not match its name); rebuild and
#: transfer's reading of a bare remote's records both take it; other names there are stray files
RECORD_FILE = re.compile(r"^v[0-9]+\.json\Z")
_RKEY = re.compile(r"^catalog/retired/([^/]+)/v([1-9][0-9]{0,9})\.json\Z")
_INTS = ("logical_bytes", "stored_bytes", "referenced_bytes")
_SALVAGE_MANIFEST = re.compile(r'"manifest"\s*:\s*"\s*(sha256:[0-9a-f]{64})')
_SALVAGE_OID = re.compile(r"sha256:[0-9a-f]{64}")
_SALVAGE_CATALOG = re.compile(r'"catalog"\s*:\s*"([0-9a-f-]{36})"')
_STRS = ("codec", "message", "author")
#: the longest message a version may have, in the bytes it takes in its record (JSON-escaped: a
#: printable ASCII character takes 1, others 2 to 12), and what its message and metrics may take
#: together (check_metrics): the rest of a record is a few KiB, so a record with such a message
#: is still one every reader takes (at most MAX_RECORD bytes)
MAX_MESSAGE = MAX_RECORD - (64 << 10)
#: how deep a record's fields may nest (metrics and codec_params are a level or two in what add
#: writes): json, dataclasses.asdict and SQLAlchemy's JSON column each recurse once a level, so a
#: planted record nested a few hundred levels raised RecursionError out of db rebuild
MAX_JSON_DEPTH = 32
#: the most values (containers and scalars) one field may hold: more than a record's bytes can spell
MAX_JSON_VALUES = MAX_RECORD // 2


def _need(cond: bool, key: str, why: str) -> None:
    if not cond:
        raise CorruptRecordError(key, why)


def read(backend: Backend, key: str) -> bytes | None:
    """A record's bytes, at most MAX_RECORD + 1 of them (one more says it is too large): a file of
    any size planted where records go is refused without being read whole. None if missing."""
    return backend.get_range(key, 0, MAX_RECORD + 1)


def check_message(message: str) -> str:
    """A version's message, if its record can hold it; else BadInputError saying the limit. The
    add path checks it before anything is written (a longer one made a record no reader takes)."""
    if not isinstance(message, str):
        raise BadInputError(f"a version's message is text, not {type(message).__name__}")
    if not is_text(message):
        raise BadInputError("a version's message is not UTF-8 text (it holds a lone surrogate: "
                            "an undecodable byte from the command line, or a \\ud800 escape)")
    size = _message_bytes(message)
    if size > MAX_MESSAGE:
        raise BadInputError(f"message too long: its {len(message)} characters take {'at least ' * (size == len(message))}"
                            f"{size} bytes in the version's record, and a message may take at most {MAX_MESSAGE} "
                            "(a printable ASCII character takes 1 byte, others 2 to 12)")
    return message


def _message_bytes(message: str) -> int:
    """The bytes ``message`` takes in a record (JSON-escaped); its length when that alone is over
    MAX_MESSAGE (each character takes at least a byte: so long a one is not escaped to be measured)."""
    return len(message) if len(message) > MAX_MESSAGE else len(json.dumps(message)) - 2


#: what a record's encoding (encode_version: sorted keys, indent=1) of empty metrics takes: the
#: bytes counted against MAX_MESSAGE are the rest (so empty metrics leave a message all of it)
_METRICS_FRAME = len(json.dumps({"metrics": {}}, indent=1))


def check_metrics(metrics: Any, message: str = "") -> dict[str, Any]:
    """A version's metrics, if its record can hold them beside ``message`` (check that first with
    :func:`check_message`): a dict of JSON values, nested and counted as a record's fields may be
    (:data:`MAX_JSON_DEPTH`, :data:`MAX_JSON_VALUES`: readers refuse a record that is not), taking
    with the message at most MAX_MESSAGE bytes in the record. Else BadInputError saying which
    rule. The add path checks them before anything is written: metrics nested 40 levels or of
    2 MiB made a version whose record every reader refused (db rebuild, gc, a pull of its model),
    and metrics nested 2,000 levels (or holding a set) failed the add's commit with a traceback."""
    if not isinstance(metrics, dict):
        raise BadInputError(f"a version's metrics are a dict (a JSON object), not {type(metrics).__name__}")
    why = _shape_problem(metrics)  # the rule readers apply to a record's fields (check_nesting)
    if why is not None:
        raise BadInputError(f"metrics {why}, more than a version's record may hold")
    try:  # (encoded as encode_version does; at most MAX_JSON_DEPTH levels, so json's recursion is bounded)
        size = len(json.dumps({"metrics": metrics}, sort_keys=True, indent=1, allow_nan=False)) - _METRICS_FRAME
    except (TypeError, ValueError) as e:
        raise BadInputError(f"metrics are not JSON: {e}") from None
    msg = _message_bytes(message) if isinstance(message, str) else 0
    if size + msg > MAX_MESSAGE:
        raise BadInputError(f"metrics too large: they take {size} bytes in the version's record"
                            + (f" and its message {msg}" if msg else "")
                            + f", and a version's metrics and message may take at most {MAX_MESSAGE} together")
    return metrics


def check_json(value: Any, what: str) -> Any:
    """``value`` if it is JSON as a catalog's JSON column stores it: no NaN or infinity (Python's
    json reads and writes them, PostgreSQL refuses them) and nothing json cannot encode; else
    BadInputError naming ``what``. Check its shape first (:func:`check_nesting`): json recurses."""
    why = _json_problem(value)
    if why is not None:
        raise BadInputError(f"{what} are not JSON: {why}")
    return value


_NOT_TEXT = "a string in them is not UTF-8 text (it holds a lone surrogate)"


def _json_problem(value: Any) -> str | None:
    """Why ``value`` is not JSON as a catalog stores it (NaN, Infinity, a type json cannot
    encode, a string that is not UTF-8 text), or None: the rule of :func:`check_json` and of :func:`parse_version`'s fields."""
    try:
        # (not ASCII-escaped: a lone surrogate in a key or a string fails the UTF-8 encode, as it
        # fails a catalog's insert; and json's escaping recurses as this does, the shape checked)
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return _NOT_TEXT
    except (TypeError, ValueError) as e:
        return str(e)
    return None


def _load(key: str, data: bytes | None) -> dict:
    _need(data is not None, key, "it vanished while being read")
    _need(len(data) <= MAX_RECORD, key, f"more than {MAX_RECORD} bytes is too large for a record")
    try:
        d = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise CorruptRecordError(key, f"not JSON: {e}") from None
    _need(isinstance(d, dict), key, "not a JSON object")
    check_nesting(key, d)
    return d


def _shape_problem(value: object) -> str | None:
    """Why a field's parsed JSON is more than a record holds (nested deeper than MAX_JSON_DEPTH
    containers, or more than MAX_JSON_VALUES values), or None. Walks without recursing."""
    stack: list[tuple[object, int]] = [(value, 1)]
    n = 1
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            inner: Any = v.values()
        elif isinstance(v, (list, tuple)):
            inner = v
        else:
            continue
        if depth > MAX_JSON_DEPTH:
            return f"nests deeper than {MAX_JSON_DEPTH} levels"
        n += len(inner)  # counted before they are stacked: a list of 10**8 is refused, not walked
        if n > MAX_JSON_VALUES:
            return f"holds more than {MAX_JSON_VALUES} values"
        stack.extend((x, depth + 1) for x in inner)
    return None


def check_nesting(key: str, fields_: dict[str, Any]) -> None:
    """Refuse (CorruptRecordError naming ``key`` and the field) a record whose fields nest deeper
    or hold more than a record may: checked before anything serialises them again."""
    for k, v in fields_.items():
        why = _shape_problem(v)
        if why is not None:
            raise CorruptRecordError(key, f"{k!s:.40} {why}")


def _name(key: str, v: object, what: str) -> str:
    try:
        return check_name(v, what)  # type: ignore[arg-type]
    except BadNameError as e:
        raise CorruptRecordError(key, str(e)) from None


class NewerRecordError(CorruptRecordError):
    """A record of a format this deltastore does not know: a newer deltastore wrote it, so it may
    be another catalog's, whose objects a gc must not delete."""


def parse_version(key: str, data: bytes | None) -> dict[str, Any]:
    """A version record's fields, each checked (types, names, ids, numbers, the date, the owner).
    ``format`` is 1 for a record without one; ``catalog`` is None for a record with no owner."""
    d = _load(key, data)
    fmt = d.get("format", 1)
    _need(type(fmt) is int, key, f"format {fmt!r:.40} is not an integer")
    if fmt not in (1, FORMAT):
        raise NewerRecordError(key, f"format {fmt} is not one this deltastore reads (1 to {FORMAT}): upgrade deltastore")
    if fmt == 1:
        _need("catalog" not in d, key, "a format-1 record names no catalog")
        d["format"], d["catalog"] = 1, None
    else:
        cat = d.get("catalog", False)
        _need(cat is None or (isinstance(cat, str) and bool(_UUID.match(cat))), key, "catalog is not a catalog id (a UUID) or null")
    _name(key, d.get("model"), "model name")
    _need(type(d.get("number")) is int and 1 <= d["number"] < 1 << 31, key, "number is not a positive integer")
    _need(isinstance(d.get("manifest"), str) and bool(_OID.match(d["manifest"])), key, "manifest is not an object id")
    _need(d.get("kind") in ("base", "finetune"), key, f"kind {d.get('kind')!r:.40} is not base or finetune")
    base = d.get("base")
    if base is not None:
        m = _BASE_REF.match(base) if isinstance(base, str) else None
        _need(m is not None, key, f"base {base!r:.80} is not NAME@vN")
        _name(key, m.group(1), "base model name")
    _need((base is None) == (d["kind"] == "base"), key, "a fine-tune names its base, a base names none")
    for k in _INTS:
        _need(type(d.get(k)) is int and 0 <= d[k] < 1 << 62, key, f"{k} is not a non-negative integer")
    for k in _STRS:  # a message is as long as the user made it (the record's own size bounds it)
        most = MAX_RECORD if k == "message" else 1 << 16
        _need(isinstance(d.get(k), str) and len(d[k]) < most, key, f"{k} is not a string of at most {most} characters")
        _need(is_text(d[k]), key, f"{k} is not UTF-8 text (it holds a lone surrogate)")
    for k in ("codec_params", "metrics"):
        _need(isinstance(d.get(k, {}), dict), key, f"{k} is not a JSON object")
        # Python's json reads NaN and Infinity; a catalog's JSON column on PostgreSQL refuses them
        # (db rebuild then failed at the insert), and no deltastore writes them (check_metrics)
        why = _json_problem(d.get(k, {}))
        _need(why in (None, _NOT_TEXT), key, f"{k} are not JSON: they hold NaN or Infinity (a catalog's JSON refuses them)")
        _need(why is None, key, f"{k} hold a string that is not UTF-8 text (a lone surrogate)")
    calib = d.get("calib_sha256")
    _need(calib is None or (isinstance(calib, str) and bool(re.match(r"^[0-9a-f]{64}\Z", calib))), key, "calib_sha256 is not a sha256")
    created = d.get("created_at")
    _need(isinstance(created, str) and len(created) < 64, key, "created_at is not a date")
    try:
        d["created_at"] = dt.datetime.fromisoformat(created.removesuffix("Z")).replace(tzinfo=None)
    except ValueError:
        raise CorruptRecordError(key, f"created_at {created!r} is not an ISO date") from None
    m = _VKEY.match(key)
    _need(m is not None and (m.group(1), int(m.group(2))) == (d["model"], d["number"]), key,
          "its name does not match the version it holds")
    d.setdefault("codec_params", {})
    d.setdefault("metrics", {})
    return d


def parse_tag(key: str, data: bytes | None) -> dict[str, Any]:
    d = _load(key, data)
    _name(key, d.get("model"), "model name")
    _name(key, d.get("tag"), "tag name")
    _need(type(d.get("version")) is int and 1 <= d["version"] < 1 << 31, key, "version is not a positive integer")
    _need(key == tag_key(d["model"], d["tag"]), key, "its name does not match the tag it holds")
    return d


def parse_retired(key: str, data: bytes | None) -> tuple[str, int]:
    """A retired-number record's (model, number), checked against its key."""
    d = _load(key, data)
    _need(d.get("format") == 1, key, f"format {d.get('format')!r:.40} is not 1")
    _name(key, d.get("model"), "model name")
    _need(type(d.get("number")) is int and 1 <= d["number"] < 1 << 31, key, "number is not a positive integer")
    m = _RKEY.match(key)
    _need(m is not None and (m.group(1), int(m.group(2))) == (d["model"], d["number"]), key,
          "its name does not match the number it holds")
    return d["model"], d["number"]


def retired_key(model: str, number: int) -> str:
    return f"{PREFIX}/retired/{model}/v{number}.json"


def encode_retired(model: str, number: int) -> bytes:
    """The bytes of a retired-number record (format 1; golden fixture tests/fixtures/records/retired-v1.json)."""
    return json.dumps({"format": 1, "model": model, "number": number}, sort_keys=True).encode()


def write_retired(backend: Backend, model: str, number: int) -> None:
    """Record, durably, that ``model``'s number ``number`` was removed and is never given again.
    ``rm`` writes it before the version's record goes: a crash between leaves both (rebuild then
    skips the version), never neither."""
    backend.put(retired_key(model, number), encode_retired(model, number))
    backend.flush()


def _record_keys(backend: Backend, folder: str) -> list[str]:
    """The record keys under ``catalog/<folder>``, sorted: JSON files, not a crashed write's temp file."""
    return [k for k in sorted(backend.list(f"{PREFIX}/{folder}"))
            if k.endswith(".json") and not k.rsplit("/", 1)[-1].startswith(TMP_PREFIX)]


def read_retired(backend: Backend) -> set[tuple[str, int]]:
    """Every retired (model, number) on the backend; a record that does not parse raises
    CorruptRecordError naming it."""
    return {parse_retired(key, read(backend, key)) for key in _record_keys(backend, "retired")}


def version_key(model: str, number: int) -> str:
    return f"{PREFIX}/versions/{model}/v{number}.json"


def tag_key(model: str, tag: str) -> str:
    return f"{PREFIX}/tags/{model}/{tag}.json"


#: each store's backend -> its catalog's id, for callers that pass only the backend (ingest's
#: commit, versions.rm); maintenance binds it whenever it takes a lease or runs gc
_BOUND: "weakref.WeakKeyDictionary[Backend, str]" = weakref.WeakKeyDictionary()


def bind(backend: Backend, catalog: str) -> None:
    """Say which catalog writes through ``backend`` (see ``_BOUND``)."""
    _BOUND[backend] = catalog


def bound(backend: Backend) -> str | None:
    return _BOUND.get(backend)


def is_own(rec: dict[str, Any], catalog: str) -> bool:
    """A parsed version record belongs to ``catalog``: it names it, or it is of format 1 (no owner)."""
    return rec["format"] == 1 or rec["catalog"] == catalog


def encode_version(info: VersionInfo, catalog: str | None) -> bytes:
    """The bytes of a version's record (format 2), owned by ``catalog`` (None: by no catalog, a
    bare remote's record)."""
    d = info.to_dict()
    d.pop("tags", None)  # tags live in their own records: they move
    d["format"] = FORMAT
    d["catalog"] = catalog
    return json.dumps(d, sort_keys=True, indent=1).encode()


def write_version(backend: Backend, info: VersionInfo, *, catalog: str | None = None) -> None:
    """Write (or overwrite) a version's record, durably: the catalog commit comes after it.

    The owner is ``catalog`` or the one bound to ``backend``. A record there of another catalog is
    not overwritten: ConflictError (two catalogs on one bucket, one model name)."""
    owner = catalog or bound(backend)
    if owner is None:
        raise RuntimeError("a version record was written with no catalog id (maintenance.lease binds it)")
    key = version_key(info.model, info.number)
    data = read(backend, key)
    try:
        held = None if data is None else parse_version(key, data)
    except NewerRecordError:
        held = {"format": None, "catalog": "a newer deltastore's"}
    except CorruptRecordError:
        held = None  # not a record anyone can use: overwritten, as before
    if held is not None and not is_own(held, owner):
        raise ConflictError(f"{info.ref}'s record on this objects location ({key}) belongs to another catalog "
                            f"({held['catalog'] or 'a bare remote'}): catalogs sharing a bucket must use different "
                            f"model names; add this under another name, or use a separate objects location")
    crash_point("records.write-version")
    backend.put(key, encode_version(info, owner))
    backend.flush()


def write_tag(backend: Backend, model: str, tag: str, number: int) -> None:
    backend.put(tag_key(model, tag), _tag_record(model, tag, number))


def create_tag(backend: Backend, model: str, tag: str, number: int) -> bool:
    """Write a tag record only where there is none (a conditional create): True if this call wrote
    it. A transfer sets only tags the other side lacks; a plain write would move one another
    writer set meanwhile."""
    return backend.put_if_absent(tag_key(model, tag), _tag_record(model, tag, number))


def _tag_record(model: str, tag: str, number: int) -> bytes:
    return json.dumps({"model": model, "tag": tag, "version": number}).encode()


def delete_version(backend: Backend, info: VersionInfo, *, catalog: str | None = None) -> None:
    """Remove a removed version's record, unless it holds another version by now (a pull into
    another catalog sharing the bucket under the same name, or a newer record), or another
    catalog's record (when this catalog's id is known: ``catalog`` or bound). The check and the
    delete are not atomic; gc writes back any record a committed version lacks."""
    crash_point("records.delete-version")
    key = version_key(info.model, info.number)
    try:
        r = parse_version(key, read(backend, key))
    except NewerRecordError:
        r = {"format": None, "catalog": "?", "manifest": None, "created_at": None}  # not ours to remove
    except CorruptRecordError:
        r = None
    own = catalog or bound(backend)
    # this catalog's id unknown (versions.rm passes only the backend; a fresh process took no lease):
    # an owned record is left for this catalog's next gc (reconcile removes its own strays), since
    # it may be another catalog's that adopted this version (db rebuild)
    mine = r is not None and (r["format"] == 1 if own is None else is_own(r, own))
    if r is None or (mine and r["manifest"] == info.manifest and r["created_at"] == info.created_at):
        backend.delete(key)
    for t in info.tags:
        backend.delete(tag_key(info.model, t))


def delete_tag(backend: Backend, model: str, tag: str) -> None:
    backend.delete(tag_key(model, tag))


@dataclass
class RecordScan:
    """Every version record on a backend, sorted by owner (see the module doc)."""

    #: key -> parsed record, for this catalog's records (and format-1 ones)
    own: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: parsed records of other catalogs (or of none: a bare remote's)
    foreign: list[dict[str, Any]] = field(default_factory=list)
    #: keys that are crashed writes' temp files
    temps: list[str] = field(default_factory=list)
    #: keys of records that do not parse ("key: why"), left where they are
    unreadable: list[str] = field(default_factory=list)


def scan(backend: Backend, catalog: str) -> RecordScan:
    """Read and sort every version record (one GET each). A record of a newer format raises
    NewerRecordError: it may be another catalog's, so nothing may be removed on its account."""
    out = RecordScan()
    for key in sorted(backend.list(f"{PREFIX}/versions")):
        if key.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
            out.temps.append(key)
            continue
        data = read(backend, key)
        if data is None:  # removed since the listing
            continue
        try:
            r = parse_version(key, data)
        except NewerRecordError:
            raise
        except CorruptRecordError as e:
            out.unreadable.append(f"{key}: {e.why}")
            kept = _salvage(key, data, catalog)
            if kept is not None:
                out.foreign.append(kept)
            continue
        r["key"] = key
        if is_own(r, catalog):
            out.own[key] = r
        else:
            out.foreign.append(r)
    return out


def _salvage(key: str, data: bytes, catalog: str) -> dict[str, Any] | None:
    """What gc must still keep for a record it cannot parse: the manifest it names, unless the
    record is this catalog's own (its versions are kept by the catalog's rows). A record refused
    for one field (a message longer than the reader takes, a damaged date) may still be another
    catalog's committed version: deleting what it reaches would lose that version. Returns a
    minimal foreign record (key, model, number, manifest), or None where it names no manifest."""
    try:
        d = json.loads(data)
    except (ValueError, RecursionError):
        # cut at MAX_RECORD (a huge message) or damaged: written with sorted keys, a record names
        # its catalog and manifest before its message; keeping more than needed is safe here
        text = data.decode("utf-8", "replace")
        found = {m.group(1) for m in _SALVAGE_MANIFEST.finditer(text)}
        cat = _SALVAGE_CATALOG.search(text)
        if len(found) != 1:
            return None
        d = {"manifest": found.pop(), "format": None, **({"catalog": cat.group(1)} if cat else {})}
    oid = _SALVAGE_OID.search(d["manifest"]) if isinstance(d, dict) and isinstance(d.get("manifest"), str) else None
    if oid is None:  # (found anywhere in the field: an id with a stray character around it is still kept)
        return None
    if d.get("catalog") == catalog or ("catalog" not in d and d.get("format", 1) == 1):
        return None  # this catalog's own (a format-1 record counts as the reader's, as in is_own)
    m = _VKEY.match(key)
    model, number = (m.group(1), int(m.group(2))) if m else (key, 0)
    return {"key": key, "model": model, "number": number, "manifest": oid.group(0), "format": None, "catalog": None}


def foreign_reach(objects: ObjectDB, recs: Iterable[dict[str, Any]]) -> tuple[set[str], list[str]]:
    """Every object the versions of ``recs`` need: each manifest, what it names, and its base's
    manifests in turn (at most MAX_CHAIN deep). Manifests are read as everything from a bucket is
    (size capped, hashed, every field checked); one that is missing or corrupt ends its chain and
    is reported ("key: why"), since what it would name cannot be known. Returns (oids, problems)."""
    keep: set[str] = set()
    problems: list[str] = []
    for r in recs:
        oid: str | None = r["manifest"]
        depth = 0
        while oid is not None and oid not in keep:
            keep.add(oid)
            depth += 1
            if depth > MAX_CHAIN:
                problems.append(f"{r['key']}: its base chain is longer than {MAX_CHAIN}")
                break
            try:
                man = Manifest.from_json(objects.get(oid, max_size=MAX_MANIFEST), oid)
            except (ObjectMissingError, CorruptObjectError) as e:
                problems.append(f"{r['key']}: manifest {oid}: {e}")
                break
            keep |= man.object_ids()
            oid = man.base
    return keep, problems


def reconcile(backend: Backend, catalog: str, committed: dict[tuple[str, int], VersionInfo], found: RecordScan,
              *, dry_run: bool = False) -> int:
    """Make this catalog's version records match it: remove its records (and temp files) that name
    no committed version (an add that crashed between its record and its commit), and write the
    record of any committed version that lacks one (an ``rm`` that raced a re-add of its number),
    unless another catalog's record holds that key. Never touches another catalog's records.
    Only safe while no add of this catalog can be between its record and its commit, i.e. under
    gc's exclusion. Returns how many records were removed or written."""
    n = 0
    have: set[tuple[str, int]] = set()
    taken = {(r["model"], r["number"]) for r in found.foreign}
    for key in found.temps:
        if not dry_run:
            backend.delete(key)
        n += 1
    for key, r in found.own.items():
        if (r["model"], r["number"]) in committed:
            have.add((r["model"], r["number"]))
        else:
            if not dry_run:
                backend.delete(key)
            n += 1
    for k in sorted(set(committed) - have - taken):
        if not dry_run:
            write_version(backend, committed[k], catalog=catalog)
        n += 1
    return n


@dataclass
class RebuildReport:
    versions: int
    tags: int
    objects: int
    #: records that could not be used (manifest gone, base gone), each "key: why"
    skipped: list[str] = field(default_factory=list)
    #: records whose base disagreed with their manifest's, imported with the manifest's, each "key: why"
    corrected: list[str] = field(default_factory=list)
    #: versions imported whose base chain is deeper than chains.MAX_BASE_CHAIN, each "key: why": kept
    #: (listed, tagged, removable, their objects kept), but no checkout rebuilds their tensors
    too_deep: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"versions": self.versions, "tags": self.tags, "objects": self.objects, "skipped": self.skipped,
                "corrected": self.corrected, "too_deep": self.too_deep}


def rebuild(store: StoreView) -> RebuildReport:
    """Fill an empty catalog from the records and manifests on the backend, and adopt them: each
    record a version was made from is rewritten with this catalog's id (in the transaction, before
    its commit: a failed rebuild leaves records this still-empty catalog owns, and running it again
    imports them again). From then on this catalog answers for those versions: its gc removes their
    objects once it removes them. Rebuild a catalog that replaces a lost one; a second catalog on the
    same bucket should add its own models rather than take over another's (module doc).

    A version whose base chain is deeper than chains.MAX_BASE_CHAIN is imported all the same and
    listed in ``too_deep`` (a checkout refuses it, naming it): skipped, it would vanish from the
    catalog, and with it what keeps its objects from gc."""
    from . import chains  # (here: chains loads the codecs, which a records reader needs not)

    with store.Session() as s:
        if s.scalar(select(func.count()).select_from(Version)):
            raise BadInputError("the catalog already has versions; rebuild fills an empty one (point --db-url at a new database)")
    recs = []
    skipped: list[str] = []
    for key in _record_keys(store.backend, "versions"):
        if not RECORD_FILE.match(key.rsplit("/", 1)[-1]):  # no record is named so (v<ASCII digits>.json)
            skipped.append(f"{key}: not a version record's name (a stray file), left where it is")
            continue
        r = parse_version(key, read(store.backend, key))
        r["key"] = key
        recs.append(r)
    # bases were added before their fine-tunes (as their hosts' clocks tell: see the queue below)
    recs.sort(key=lambda r: (r["created_at"], r["model"], r["number"]))
    retired = read_retired(store.backend)
    ids: dict[str, int] = {}
    manifests: dict[str, str] = {}  # imported REF -> its manifest id
    by_manifest: dict[str, str] = {}  # manifest id -> the first imported REF with it
    corrected: list[str] = []
    too_deep: list[str] = []
    depths: dict[str, int] = {}  # imported REF -> base links to its root (its base's + 1)
    adopted: list[dict[str, Any]] = []
    seen: set[str] = set()
    ntags = 0
    with store.Session.begin() as s:
        models: dict[str, Model] = {}
        # a record waits for its base's version to be imported (the order of created_at is only the
        # adding hosts' clocks: a fine-tune added from a host running behind sorts before its base)
        queue = deque(recs)
        waiting: dict[str, list[dict[str, Any]]] = {}  # a base manifest id -> the records waiting for it
        loaded: dict[str, Manifest] = {}
        while queue:
            r = queue.popleft()
            if (r["model"], r["number"]) in retired:  # rm committed, then stopped before removing this record
                skipped.append(f"{r['key']}: {r['model']}@v{r['number']} was removed (a retired-number record names it)")
                continue
            man = loaded.get(r["key"])
            if man is None:
                try:  # a record left by an add that never committed may name a manifest gc removed
                    man = loaded[r["key"]] = Manifest.from_json(store.objects.get(r["manifest"], max_size=MAX_MANIFEST), r["manifest"])
                except ObjectMissingError:
                    skipped.append(f"{r['key']}: its manifest {r['manifest']} is not on the backend")
                    continue
            # the version's base is the one its manifest deltas against (content-addressed, so it
            # cannot lie), not whatever its record says: the catalog's lineage is what rm protects,
            # so a record naming another base would let rm and gc take objects this version needs
            named = r.get("base")
            if man.base is None:
                base_ref = None
            elif named is not None and manifests.get(named) == man.base:
                base_ref = named
            else:
                base_ref = by_manifest.get(man.base)
                if base_ref is None:
                    waiting.setdefault(man.base, []).append(r)
                    continue
            if base_ref != named:
                corrected.append(f"{r['key']}: names base {named or 'none'}, but its manifest's base is "
                                 f"{base_ref or 'none'}'s: imported with {base_ref or 'no base'}")
                r = {**r, "base": base_ref, "kind": "base" if base_ref is None else "finetune", "corrected": True}
            base_id = None if base_ref is None else ids[base_ref]
            m = models.get(r["model"])
            if m is None:
                m = models[r["model"]] = Model(name=r["model"])
                s.add(m)
                s.flush()
            created = r["created_at"]
            v = Version(model_id=m.id, number=r["number"], manifest=r["manifest"], base_version_id=base_id, kind=r["kind"],
                        codec=r["codec"], codec_params=r["codec_params"], logical_bytes=r["logical_bytes"],
                        stored_bytes=r["stored_bytes"], referenced_bytes=r["referenced_bytes"], message=r["message"],
                        author=r["author"], created_at=created, metrics=r["metrics"], calib_sha256=r.get("calib_sha256"))
            s.add(v)
            s.flush()
            ref = f"{r['model']}@v{r['number']}"
            ids[ref] = v.id
            depths[ref] = 0 if base_ref is None else depths[base_ref] + 1
            if depths[ref] > chains.MAX_BASE_CHAIN:
                too_deep.append(f"{r['key']}: {chains.too_deep(ref)} ({depths[ref]} links): imported; "
                                "checkout refuses it")
            manifests[f"{r['model']}@v{r['number']}"] = r["manifest"]
            by_manifest.setdefault(r["manifest"], f"{r['model']}@v{r['number']}")
            queue.extendleft(reversed(waiting.pop(r["manifest"], [])))  # its fine-tunes, in their order
            adopted.append(r)
            if base_id is not None:
                s.add(LineageRow(parent_id=base_id, child_id=v.id, relation="base"))
            kinds = man.object_kinds(r["manifest"])
            logical = {t.object: t.nbytes for _, t in man.tensors() if t.object and t.source == "tensor"}
            logical.update({f.object: f.size for f in man.files if f.object})
            for oid in sorted(man.object_ids() | {r["manifest"]}):
                s.add(VersionObject(version_id=v.id, oid=oid))
                if oid not in seen:
                    seen.add(oid)
                    size = store.objects.stored_size(oid) or 0
                    s.add(ObjectRow(oid=oid, kind=kinds.get(oid, "blob"), logical_bytes=logical.get(oid, size), stored_bytes=size))
        for base, rs in waiting.items():
            skipped += [f"{r['key']}: its base {r.get('base') or base} has no usable record" for r in rs]
        # numbers never handed out again: those rm recorded (a removal older than retired records is
        # unknown here: its number may be handed out again)
        for m, n in sorted(retired):
            s.add(RetiredNumber(model_name=m, number=n))
        own = catalog_id(s)
        for r in adopted:
            if not is_own(r, own) or r["format"] != FORMAT or r.get("corrected"):
                info = VersionInfo(**{f.name: r[f.name] for f in fields(VersionInfo) if f.name in r and f.name != "tags"})
                store.backend.put(r["key"], encode_version(info, own))
        store.backend.flush()
        tagged: set[tuple[str, str]] = set()
        for key in _record_keys(store.backend, "tags"):
            t = parse_tag(key, read(store.backend, key))
            vid = ids.get(f"{t['model']}@v{t['version']}")
            if vid is not None and (t["model"], t["tag"]) not in tagged:
                tagged.add((t["model"], t["tag"]))
                s.add(Tag(model_id=models[t["model"]].id, name=t["tag"], version_id=vid))
                ntags += 1
    return RebuildReport(versions=len(ids), tags=ntags, objects=len(seen), skipped=skipped, corrected=corrected,
                         too_deep=too_deep)
