"""``lossless``: the fine-tune's exact bits, coded as a difference of bit patterns.

A fine-tune moves most weights by a few units in the last place. Subtracting the *values* would
round; subtracting the bit patterns does not. Each float's bits are mapped to an integer that
keeps the float order (sign-magnitude to two's complement), the base's is subtracted with
wrap-around in the same width, the difference is zigzagged so small negatives become small
positives, and the result goes through byte planes + zstd (``planes``). Decoding runs the same
steps backwards and gives back the same bits, NaN payloads and signed zeros included.

With no base, or a base of another dtype or shape, the tensor is stored on its own in byte planes.
"""

from __future__ import annotations

import numpy as np
import torch

from . import planes
from .base import Codec, EncodeContext, Encoded, check_pair
from .errors import CodecError, CorruptPayloadError
from .registry import register_codec

_SINT = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
_FLOATS = {torch.float16, torch.bfloat16, torch.float32, torch.float64}


def tensor_u8(t: torch.Tensor) -> np.ndarray:
    """The tensor's raw little-endian bytes as a flat uint8 numpy array (no copy when contiguous)."""
    t = t.detach().contiguous().cpu()
    return t.reshape(-1).view(torch.uint8).numpy()


def ordered(bits: np.ndarray) -> np.ndarray:
    """Float bit patterns (as signed ints) -> integers in the same order as the floats. Involution."""
    nbits = bits.dtype.itemsize * 8
    mag = np.array((1 << (nbits - 1)) - 1, dtype=bits.dtype)
    return bits ^ ((bits >> (nbits - 1)) & mag)


def zigzag(d: np.ndarray) -> np.ndarray:
    nbits = d.dtype.itemsize * 8
    return (d << 1) ^ (d >> (nbits - 1))


def unzigzag(z: np.ndarray) -> np.ndarray:
    u = z.view(np.dtype(f"u{z.dtype.itemsize}"))
    return ((u >> 1).view(z.dtype)) ^ -(z & 1)


def diff_code(target: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    """uint8 bytes of target and base (same length) -> uint8 bytes of the zigzagged ordered difference."""
    st = target.view(_SINT[width])
    sb = base.view(_SINT[width])
    with np.errstate(over="ignore"):
        d = ordered(st) - ordered(sb)
        return zigzag(d).view(np.uint8)


def diff_decode(code: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    z = code.view(_SINT[width])
    sb = base.view(_SINT[width])
    with np.errstate(over="ignore"):
        return ordered(unzigzag(z) + ordered(sb)).view(np.uint8)


@register_codec
class Lossless(Codec):
    """Bit-exact: the decoded tensor has the fine-tune's exact bits."""

    codec_id = "lossless"
    version = 1
    lossless = True

    def __init__(self, level: int = 3):
        if not 1 <= int(level) <= 22:
            raise CodecError(f"zstd level must be 1..22, got {level}")
        self.level = int(level)

    def encode(self, target: torch.Tensor, base: torch.Tensor | None, ctx: EncodeContext | None = None) -> Encoded:
        width = target.element_size()
        raw = tensor_u8(target)
        usable = (
            base is not None
            and base.dtype == target.dtype
            and tuple(base.shape) == tuple(target.shape)
            and target.dtype in _FLOATS
        )
        if usable:
            code = diff_code(raw, tensor_u8(base), width)
            stream = planes.compress(code, width, rotate=False, level=self.level)
            mode = "diff"
        else:
            stream = planes.compress(raw, width, rotate=target.dtype in _FLOATS, level=self.level)
            mode = "plain"
        payload = torch.frombuffer(bytearray(stream), dtype=torch.uint8) if stream else torch.empty(0, dtype=torch.uint8)
        return self._new(target, {"stream": payload}, {"mode": mode})

    def _raw(self, enc: Encoded, base: torch.Tensor | None) -> np.ndarray:
        self._check_version(enc)
        dtype = getattr(torch, enc.dtype)
        width = torch.empty((), dtype=dtype).element_size()
        code = planes.decompress(enc.arrays["stream"].numpy())
        if enc.meta.get("mode") == "diff":
            if base is None:
                raise CodecError("this lossless delta needs its base tensor to decode")
            check_pair(torch.empty(enc.shape, device="meta"), base)
            return diff_decode(code, tensor_u8(base.to(dtype)), width)
        if enc.meta.get("mode") != "plain":
            raise CorruptPayloadError(f"unknown lossless mode {enc.meta.get('mode')!r}")
        return code

    def reconstruct(self, enc: Encoded, base: torch.Tensor | None) -> torch.Tensor:
        dtype = getattr(torch, enc.dtype)
        raw = self._raw(enc, base)
        out = torch.from_numpy(raw.copy() if not raw.flags.writeable else raw).view(dtype).reshape(enc.shape)
        return out if base is None else out.to(base.device)

    def decode_delta(self, enc: Encoded, device: torch.device | str | None = None) -> torch.Tensor:
        raise CodecError("a lossless payload decodes to the fine-tune itself: use reconstruct(enc, base)")

    def decode_delta_with_base(self, enc: Encoded, base: torch.Tensor) -> torch.Tensor:
        return self.reconstruct(enc, base).to(torch.float32) - base.to(torch.float32)
