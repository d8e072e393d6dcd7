"""What the lossy codecs share: which tensors they take, the budget parameter, the float delta.

Every lossy codec acts on 2-D linear weights only. Embeddings, ``lm_head`` and norms (and any
1-D tensor) stay with the lossless codec, as CODECS.md says (delta-come step 5).

Budgets are ``alpha * 16 * m * n`` bits for an m x n matrix (alpha = 1/16 by default, i.e. one
sixteenth of a 16-bit matrix). Codecs that size themselves from alpha count every stored byte,
the serialized header included, unless told to use the papers' accounting.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import torch

from .base import Codec, EncodeContext, Encoded, check_pair
from .errors import CodecError

_SKIP_NAMES = ("embed", "lm_head", "norm", "wte", "wpe")
ACCOUNTING = ("all-in", "paper")


def parse_alpha(alpha: Any) -> float:
    """alpha as a float in (0, 1]; accepts numbers and strings like "1/16" or "0.0625"."""
    try:
        if isinstance(alpha, bool):
            raise TypeError
        value = float(Fraction(alpha.strip())) if isinstance(alpha, str) else float(alpha)
    except (TypeError, ValueError, ZeroDivisionError):
        raise CodecError(f"alpha must be a number in (0, 1] such as 0.0625 or '1/16', got {alpha!r}") from None
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise CodecError(f"alpha must be in (0, 1] (the fraction of a 16-bit matrix to spend), got {alpha!r}")
    return value


def parse_accounting(accounting: str) -> str:
    if accounting not in ACCOUNTING:
        raise CodecError(f"accounting must be one of {ACCOUNTING}, got {accounting!r}")
    return accounting


def parse_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise CodecError(f"seed must be a non-negative integer (or None to use the store's), got {seed!r}")
    return seed


def is_linear_weight(name: str, shape: tuple[int, ...] | list[int]) -> bool:
    """2-D weights that are not embeddings, lm_head or norms: the linears lossy codecs compress
    (and what "linears-only" ratios count)."""
    if len(shape) != 2:
        return False
    lname = name.lower()
    return not any(s in lname for s in _SKIP_NAMES)


def is_lossy_target(name: str, tensor: torch.Tensor) -> bool:
    return is_linear_weight(name, tuple(tensor.shape))


class LossyCodec(Codec):
    """Shared plumbing for the lossy codecs."""

    def applies_to(self, name: str, target: torch.Tensor) -> bool:
        return is_lossy_target(name, target)

    @staticmethod
    def _device(ctx: EncodeContext | None) -> torch.device:
        if ctx is not None and ctx.device is not None:
            return torch.device(ctx.device)
        return torch.device("cpu")

    def _float_delta(self, target: torch.Tensor, base: torch.Tensor | None, ctx: EncodeContext | None) -> torch.Tensor:
        """Check shapes and return target - base as a float32 matrix on the encode device."""
        check_pair(target, base)
        if target.dim() != 2:
            raise CodecError(f"codec {self.codec_id!r} encodes 2-D weight matrices; got shape {tuple(target.shape)}")
        if not (target.dtype.is_floating_point and (base is None or base.dtype.is_floating_point)):
            raise CodecError(f"codec {self.codec_id!r} encodes float tensors; got {target.dtype}")
        dev = self._device(ctx)
        d = target.to(device=dev, dtype=torch.float32)
        if base is not None:
            d = d - base.to(device=dev, dtype=torch.float32)
        if not bool(torch.isfinite(d).all()):
            raise CodecError(f"codec {self.codec_id!r}: the delta has NaN or infinite values; store this tensor losslessly")
        return d

    def _seed(self, ctx: EncodeContext | None) -> int:
        own = getattr(self, "seed", None)
        if own is not None:
            return int(own)
        return int(ctx.seed) if ctx is not None else 0

    def budget_bits(self, shape: tuple[int, ...]) -> int:
        """The asked budget for a matrix of this shape: floor(alpha * 16 * m * n) bits."""
        m, n = shape
        return math.floor(self.alpha * 16 * m * n + 1e-9)  # type: ignore[attr-defined]

    def _header_bits(self, target_shape: tuple[int, int], dtype: str, arrays: dict[str, tuple[tuple[int, ...], torch.dtype]], meta: dict[str, Any]) -> int:
        """Serialized-header size in bits for a payload with these array shapes (no data needed)."""
        from .serialize import header_bytes

        fake = Encoded(
            codec=self.codec_id,
            version=self.version,
            params={k: v for k, v in self.get_config().items() if k != "id"},
            shape=tuple(target_shape),
            dtype=dtype,
            arrays={k: torch.empty(s, dtype=dt, device="meta") for k, (s, dt) in arrays.items()},
            meta=meta,
        )
        return 8 * len(header_bytes(fake))

    def _finish(self, target: torch.Tensor, arrays: dict[str, torch.Tensor], meta: dict[str, Any]) -> Encoded:
        arrays = {k: v.detach().to("cpu").contiguous() for k, v in arrays.items()}
        return self._new(target, arrays, meta)
