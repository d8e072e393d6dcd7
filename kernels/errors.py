"""Errors the kernels layer raises; the store maps them to its own error root."""

from __future__ import annotations

from deltastore.codec.errors import CodecError


class KernelError(CodecError):
    """Packed deltas that cannot be applied as asked (bad shapes, devices, dtypes or ids)."""


class NotServableError(KernelError):
    """A delta the lazy kernels cannot apply (a codec or option with no kernel): load it materialized."""
