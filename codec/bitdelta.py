"""``bitdelta``: one bit per weight, ``D^ = a * sign(D)`` with one scale per matrix.

For fixed signs ``s = sign(D)`` the scale minimizing ``||D - a s||_F`` is ``<D, s> / ||s||^2 =
mean(|D|)``, the initial value. Zeros count as positive (bit 1), which leaves that optimum
unchanged. Scale distillation (tuning ``a`` so the compressed model's logits match the
fine-tune's on calibration text) needs a whole model and lives in the store
(``deltastore/tuning.py``); it hands the tuned value in as ``ctx.extra["scale"]``, or replaces a
payload's scale with :func:`set_scale`.

Payload: ``signs`` int32 (m, ceil(n/32)), the 1-bit packed layout of quant.py (bit j of word w of
a row is column 32*w + j; 1 means +a, 0 means -a; padding bits are 0), and ``scale`` float32 (1,).

Size: ``m * 32 * ceil(n / 32)`` bits + 32 + the header, i.e. 1 bpp plus a few hundred bytes. It
has no budget knob: at alpha = 1/16 (1 bpp) the header and scale make it exceed the budget by
their bytes (about 0.02% for a 4096 x 4096 matrix, more for tiny ones).
"""

from __future__ import annotations

import dataclasses

import torch

from . import checks, quant
from .base import EncodeContext, Encoded
from .errors import CodecError
from .lossy import LossyCodec
from .registry import register_codec


def set_scale(enc: Encoded, a: float | torch.Tensor) -> Encoded:
    """A copy of a bitdelta payload with its scale replaced (e.g. after scale distillation)."""
    if enc.codec != BitDelta.codec_id:
        raise CodecError(f"set_scale takes a bitdelta payload, not {enc.codec!r}")
    value = torch.as_tensor(a, dtype=torch.float32).detach().reshape(1).cpu()
    if not bool(torch.isfinite(value).all()):
        raise CodecError(f"a bitdelta scale must be finite, got {a!r}")
    return dataclasses.replace(enc, arrays={**enc.arrays, "scale": value})


def get_scale(enc: Encoded) -> float:
    return float(enc.arrays["scale"][0])


@register_codec
class BitDelta(LossyCodec):
    """Sign bits plus one float32 scale per matrix."""

    codec_id = "bitdelta"
    needs = frozenset({"model"})
    version = 1

    def __init__(self) -> None:
        pass

    def encode(self, target: torch.Tensor, base: torch.Tensor | None, ctx: EncodeContext | None = None) -> Encoded:
        D = self._float_delta(target, base, ctx)
        given = ctx.extra.get("scale") if ctx is not None else None
        if given is not None:
            a = torch.as_tensor(given, dtype=torch.float32).detach().reshape(()).cpu()
            if not bool(torch.isfinite(a)):
                raise CodecError(f"a bitdelta scale must be finite, got {given!r}")
        else:
            a = D.abs().mean(dtype=torch.float64).to(torch.float32) if D.numel() else torch.tensor(0.0)
        bits = (D >= 0).to(torch.int64)
        return self._finish(target, {"signs": quant.pack(bits, 1), "scale": a.reshape(1)}, {})

    def check_payload(self, enc: Encoded) -> None:
        """Check a payload against what this codec writes: the signs of every element, one scale."""
        m, n = checks.matrix_shape(enc)
        checks.expect_arrays(enc, {"signs": ((m, quant.packed_words(n, 1)), torch.int32), "scale": ((1,), torch.float32)})
        checks.expect_finite(enc, ("scale",))

    def decode_delta(self, enc: Encoded, device: torch.device | str | None = None) -> torch.Tensor:
        if not isinstance(checks.check_payload(enc), BitDelta):
            raise CodecError(f"payload was written by codec {enc.codec!r}, not {self.codec_id!r}")
        m, n = enc.shape
        bits = quant.unpack(enc.arrays["signs"].to(device), 1, n)
        a = enc.arrays["scale"].to(device=device, dtype=torch.float32)
        return (bits.to(torch.float32) * 2 - 1) * a
