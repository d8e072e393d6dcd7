"""``lowrank``: SVD truncation, the top r components at 16 bits (the simplest baseline).

``r = floor(alpha * 16 * m * n / (16 * (m + n)))`` with ``accounting="paper"`` (4096 x 4096 at
alpha = 1/16 -> 128). That count fills the budget exactly with factor bits alone, so the header
and the per-matrix scale push it over; ``accounting="all-in"`` (default) takes the largest r whose
whole payload (factors, scale, header) fits: 127 for 4096 x 4096.

Payload: ``A`` float16 (m, r) = U sqrt(S / c), ``B`` float16 (n, r) = V sqrt(S / c), ``c`` float32
(1,) = the largest singular value (so the factors' entries stay well inside the fp16 normal range
for any delta scale). ``D^ = c * A B^T``; a kernel applies ``y += c * ((x B) A^T)``. meta: ``rank`` (r).
"""

from __future__ import annotations

import math
import torch

from . import checks
from .base import EncodeContext, Encoded
from .errors import CodecError
from .lossy import LossyCodec, parse_accounting, parse_alpha
from .registry import register_codec


def lowrank_rank(m: int, n: int, alpha: float | str = 1 / 16) -> int:
    """The paper-accounting rank: floor(alpha * 16 * m * n / (16 * (m + n))), clipped at min(m, n)."""
    a = parse_alpha(alpha)
    return min(min(m, n), math.floor(a * 16 * m * n / (16 * (m + n)) + 1e-9))


@register_codec
class LowRank(LossyCodec):
    """Top-r SVD truncation stored in fp16."""

    codec_id = "lowrank"
    version = 1

    def __init__(self, alpha: float | str = 1 / 16, accounting: str = "all-in"):
        self.alpha = parse_alpha(alpha)
        self.accounting = parse_accounting(accounting)

    def _specs(self, m: int, n: int, r: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"A": ((m, r), torch.float16), "B": ((n, r), torch.float16), "c": ((1,), torch.float32)}

    def rank(self, m: int, n: int, dtype: str = "bfloat16") -> int:
        r = lowrank_rank(m, n, self.alpha)
        if self.accounting == "paper":
            return r
        budget = self.budget_bits((m, n))
        while r > 0:
            head = self._header_bits((m, n), dtype, self._specs(m, n, r), {"rank": r})
            if head + 32 + 16 * r * (m + n) <= budget:
                break
            r -= 1
        return r

    def encode(self, target: torch.Tensor, base: torch.Tensor | None, ctx: EncodeContext | None = None) -> Encoded:
        D = self._float_delta(target, base, ctx)
        m, n = D.shape
        r = self.rank(m, n, str(target.dtype).removeprefix("torch."))
        U, S, Vh = torch.linalg.svd(D, full_matrices=False)
        U, S, Vh = U[:, :r], S[:r], Vh[:r]
        c = S[0] if r > 0 and float(S[0]) > 0 else torch.tensor(1.0, device=D.device)
        root = torch.sqrt(S / c).unsqueeze(0)
        arrays = {
            "A": (U * root).to(torch.float16),
            "B": (Vh.T * root).to(torch.float16),
            "c": c.reshape(1).to(torch.float32),
        }
        return self._finish(target, arrays, {"rank": r})

    def check_payload(self, enc: Encoded) -> None:
        """Check a payload against what this codec (built from its parameters) writes."""
        m, n = checks.matrix_shape(enc)
        r = checks.as_int(enc, checks.get(enc, "rank"), "meta 'rank'", 0, min(m, n))
        checks.expect_arrays(enc, self._specs(m, n, r))
        checks.expect_finite(enc, ("A", "B", "c"))

    def decode_delta(self, enc: Encoded, device: torch.device | str | None = None) -> torch.Tensor:
        if not isinstance(checks.check_payload(enc), LowRank):
            raise CodecError(f"payload was written by codec {enc.codec!r}, not {self.codec_id!r}")
        A = enc.arrays["A"].to(device=device, dtype=torch.float32)
        B = enc.arrays["B"].to(device=device, dtype=torch.float32)
        c = enc.arrays["c"].to(device=device, dtype=torch.float32)
        return c * (A @ B.T)
