"""One root error for everything the store refuses; subclasses also inherit the matching builtin,
so callers can catch ``FileNotFoundError`` or ``ValueError`` without knowing deltastore."""

from __future__ import annotations


class DeltaStoreError(Exception):
    """Root of every error deltastore raises on purpose. The CLI prints its message as one line."""


class BadInputError(DeltaStoreError, ValueError):
    """What the user handed us cannot be stored as asked (bad file, bad name, bad parameter)."""


class PickleRefusedError(BadInputError):
    """A pickle checkpoint: never unpickled, since loading one runs arbitrary code."""


class BadSafetensorsError(BadInputError):
    """A safetensors file that is truncated, or whose header lies about offsets, dtypes or shapes."""


class BaseMismatchError(BadInputError):
    """A fine-tune that does not fit the base it names (tensor names or shapes differ)."""


class BadNameError(BadInputError):
    """A model or tag name the store will not accept."""


class ChainTooDeepError(BadInputError):
    """A version whose base chain is deeper than deltastore rebuilds tensors through
    (``chains.MAX_BASE_CHAIN``), or an add that would make one."""


class NotFoundError(DeltaStoreError, LookupError):
    """A model, version, tag or object that does not exist."""


class UnknownRefError(NotFoundError):
    """A REF that names no version."""


class ObjectMissingError(NotFoundError, FileNotFoundError):
    """An object the catalog refers to is not on the backend."""

    def __init__(self, oid: str, msg: str | None = None):
        self.oid = oid
        super().__init__(msg or f"object {oid} is missing from the object store")

    def __str__(self) -> str:
        return self.args[0]


class CorruptObjectError(DeltaStoreError, ValueError):
    """An object whose bytes do not decode or do not hash to its name."""

    def __init__(self, oid: str, why: str):
        self.oid = oid
        self.why = why
        super().__init__(f"object {oid} is corrupt: {why}")


class ReadOnlyError(DeltaStoreError, PermissionError):
    """A write to a store opened read-only."""


class ConflictError(DeltaStoreError):
    """The catalog changed under us (a concurrent writer); retrying usually works."""


class RemoteError(DeltaStoreError, ConnectionError):
    """A remote that cannot be used as asked: unreachable, refusing our credentials, not a store,
    or holding records that disagree with its objects. The message names the remote, never a secret."""


class LockedError(ConflictError):
    """gc and adds exclude each other: gc waits for running adds, adds wait for a running gc.
    Raised when the wait ran out; the message names who holds the store (host, pid, since)."""


class CorruptRecordError(DeltaStoreError, ValueError):
    """A version or tag record beside the objects that is not what this deltastore writes."""

    def __init__(self, key: str, why: str):
        self.key = key
        self.why = why
        super().__init__(f"record {key} is malformed: {why}")


class TransferRefusedError(DeltaStoreError):
    """A push or pull of many versions (``--all``, ``--tag``) that refused some of them, each for
    what its source holds for it (a record that fails a check, a base chain too deep, a damaged
    object): every other version was moved, and nothing of a refused one is committed on the other
    side. ``results``: the transfers that completed; ``refused``: (REF on the source, why) for each
    version not moved, why in one line."""

    verb = "moved"

    def __init__(self, remote: str, results: list, refused: list[tuple[str, str]]):
        self.remote, self.results, self.refused = remote, results, refused
        super().__init__(f"{len(refused)} of {len(results) + len(refused)} versions {self._where(remote)}: "
                         + "; ".join(f"{ref}: {why}" for ref, why in refused))

    def _where(self, remote: str) -> str:
        return f"were not {self.verb} ({remote})"


class PullRefusedError(TransferRefusedError):
    """:class:`TransferRefusedError` of a pull (REFs on the remote)."""

    verb = "pulled"

    def _where(self, remote: str) -> str:
        return f"on {remote} were not pulled"


class PushRefusedError(TransferRefusedError):
    """:class:`TransferRefusedError` of a push (REFs in this store)."""

    verb = "pushed"

    def _where(self, remote: str) -> str:
        return f"were not pushed to {remote}"
