"""The codec contract.

A codec turns one fine-tuned tensor (and its base tensor) into an :class:`Encoded` payload of
named arrays, and back. It knows nothing about the store: no keys, no files, no catalog.

Why the codec sees the fine-tune *and* the base rather than only ``delta = F - B``: the lossless
codec works on bit patterns, which a float subtraction would destroy; lossy codecs compute the
delta themselves in float32. ``decode_delta`` gives the float delta (what kernels apply);
``reconstruct`` gives the fine-tune's tensor in its own dtype (what checkout writes).

Like numcodecs, a codec is configured by JSON-only parameters; ``get_config`` / ``from_config``
round-trip it, equality comes from the config, and ``codec_id`` + ``version`` name the format of
the payload so that old payloads keep decoding.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import numpy as np
import torch

from .errors import CodecError

#: Float dtypes a lossy codec may take (fp8 and integer tensors always go lossless).
FLOAT_DTYPES = frozenset({torch.bfloat16, torch.float16, torch.float32, torch.float64})


@dataclass
class Encoded:
    """One tensor's encoded delta: which codec, its parameters, and the named arrays it stores.

    ``arrays`` hold everything the codec keeps (packed integers, scales, compressed byte planes as
    uint8 tensors). ``meta`` holds small JSON facts (shape, dtype, seeds, tier layout). ``nbytes``
    counts every byte that will be stored: arrays plus the JSON header, so bpp figures are all-in.
    """

    codec: str
    version: int
    params: dict[str, Any]
    shape: tuple[int, ...]
    dtype: str  # torch dtype name of the fine-tune's tensor, e.g. "bfloat16"
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        return {
            "codec": self.codec,
            "version": self.version,
            "params": self.params,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "meta": self.meta,
            "arrays": [
                {"name": k, "dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
                for k, v in self.arrays.items()
            ],
        }

    def header_bytes(self) -> bytes:
        """The header exactly as serialized: compact sorted JSON (serialize.py writes these bytes)."""
        return json.dumps(self.header(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def nbytes(self) -> int:
        """All-in stored size: array bytes plus the serialized header."""
        return len(self.header_bytes()) + sum(a.numel() * a.element_size() for a in self.arrays.values())

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def bpp(self) -> float:
        """Bits per parameter, all-in (CODECS.md's accounting)."""
        return 8.0 * self.nbytes / max(self.numel, 1)


@dataclass
class EncodeContext:
    """What the store knows about a tensor beyond its values, for codecs that care.

    ``hessian`` is the layer's input Hessian ``H = sum_t x_t x_t^T`` (in_features x in_features,
    float32) for GPTQ-style compensation, or None; the store passes one per linear layer.
    ``calib`` is a calibration activation matrix (tokens x in_features); codecs that need a
    Hessian and get only ``calib`` use ``calib^T calib``. ``device`` is where heavy math should
    run. ``seed`` makes randomized codecs deterministic. ``extra`` holds per-tensor settings a
    calibration pre-pass chose (JSON-able values), e.g. ``{"scale": 0.0012}`` for ``bitdelta``'s
    distilled scale; codecs ignore keys they do not know.
    """

    name: str = ""
    calib: torch.Tensor | None = None
    hessian: torch.Tensor | None = None
    device: torch.device | str | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Codec(ABC):
    """Base class for delta codecs. Subclasses set ``codec_id`` and ``version``."""

    codec_id: ClassVar[str]
    version: ClassVar[int] = 1
    #: True when decoding gives back the fine-tune's exact bits.
    lossless: ClassVar[bool] = False
    #: What the codec can use from the store beyond the two tensors, when the user gives
    #: calibration text: ``"hessian"`` (each linear's input Hessian, for GPTQ-style compensation)
    #: or ``"model"`` (a pre-pass that runs the whole base model, e.g. bitdelta's scale
    #: distillation). The store reads this instead of knowing codec names.
    needs: ClassVar[frozenset[str]] = frozenset()

    # -- configuration -------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """JSON-able parameters; by default the public attributes, as numcodecs does."""
        cfg = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        cfg["id"] = self.codec_id
        return cfg

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Codec":
        cfg = dict(config)
        cfg.pop("id", None)
        return cls(**cfg)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(json.dumps(self.get_config(), sort_keys=True))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({params})"

    @property
    def fingerprint(self) -> str:
        """Short stable hash of id, version and config, recorded with what the codec produced."""
        blob = json.dumps({"v": self.version, **self.get_config()}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # -- the work ------------------------------------------------------------------------------
    def applies_to(self, name: str, target: torch.Tensor) -> bool:
        """Whether this codec should encode this tensor; the store uses ``lossless`` otherwise.

        Lossy delta codecs act on 2-D linear weights; embeddings, lm_head and norms stay lossless
        (CODECS.md, delta-come step 5) unless a codec says otherwise.
        """
        return True

    def takes(self, name: str, target: torch.Tensor, base: torch.Tensor | None) -> bool:
        """Whether a fine-tune's tensor goes to this codec rather than to ``lossless``: a 2-D
        float tensor (bf16, fp16, fp32, fp64) of its base's shape that :meth:`applies_to` accepts.
        One predicate, used by the store and by calibration pre-passes alike."""
        return (target.dtype in FLOAT_DTYPES and target.dim() == 2 and base is not None
                and tuple(base.shape) == tuple(target.shape) and self.applies_to(name, target))

    @abstractmethod
    def encode(self, target: torch.Tensor, base: torch.Tensor | None, ctx: EncodeContext | None = None) -> Encoded:
        """Encode ``target`` (the fine-tune's tensor) against ``base`` (same shape), or alone."""

    @abstractmethod
    def decode_delta(self, enc: Encoded, device: torch.device | str | None = None) -> torch.Tensor:
        """The float32 delta the payload stands for (target - base, approximately or exactly)."""

    def reconstruct(self, enc: Encoded, base: torch.Tensor | None) -> torch.Tensor:
        """The fine-tune's tensor in its own dtype: base + decoded delta, rounded once."""
        delta = self.decode_delta(enc, device=None if base is None else base.device)
        dtype = getattr(torch, enc.dtype)
        if base is None:
            return delta.to(dtype)
        return (base.to(torch.float32) + delta).to(dtype)

    def reconstruct_into(self, enc: Encoded, base: torch.Tensor | None, out: np.ndarray) -> np.ndarray:
        """:meth:`reconstruct`'s bytes (uint8) written into ``out`` (a checkout's window onto its
        file) and ``out`` returned; bytes of another size than ``out`` are returned as they are,
        for the caller's size check. Codecs that can decode straight into ``out`` override it
        (lossless), saving the tensor-sized array and the copy."""
        raw = self.reconstruct(enc, base).contiguous().reshape(-1).view(torch.uint8).numpy()
        if raw.size != out.size:
            return raw
        out[:] = raw  # numpy copies without the GIL
        return out

    def warm(self, dtypes: Iterable[torch.dtype]) -> None:
        """Load, in the calling thread, whatever this codec's encode and decode of tensors of
        these dtypes load on their first call (compiled kernels), so that a pool of workers does
        not meet that first call together. Nothing by default."""

    # -- helpers for subclasses ----------------------------------------------------------------
    def _new(self, target: torch.Tensor, arrays: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> Encoded:
        return Encoded(
            codec=self.codec_id,
            version=self.version,
            params={k: v for k, v in self.get_config().items() if k != "id"},
            shape=tuple(target.shape),
            dtype=str(target.dtype).removeprefix("torch."),
            arrays=arrays,
            meta=meta or {},
        )

    def _check_version(self, enc: Encoded) -> None:
        if enc.codec != self.codec_id:
            raise CodecError(f"payload was written by codec {enc.codec!r}, not {self.codec_id!r}")
        if enc.version > self.version:
            raise CodecError(
                f"payload is {enc.codec} format v{enc.version}; this deltastore reads up to v{self.version}: upgrade deltastore"
            )


def check_pair(target: torch.Tensor, base: torch.Tensor | None) -> None:
    """A delta needs a base of the same shape; say which shapes disagree."""
    if base is not None and tuple(base.shape) != tuple(target.shape):
        raise CodecError(f"shape mismatch: fine-tune {tuple(target.shape)} vs base {tuple(base.shape)}")
