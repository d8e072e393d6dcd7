"""Low-rank (``lowrank`` codec) deltas served lazily: ``y += c_t ((x B_t) A_t^T)`` per row's fine-tune.

A lowrank payload is two fp16 factors and a scale (``codec/lowrank.py``: D^ = c A B^T, A (m, r),
B (n, r)), the shape LoRA adapters have, so two dense GEMMs apply it (cuBLAS on a GPU): no
packed format to decode and no Triton kernel needed. The factors are kept as stored (fp16) and
converted to float32 once per add/drop for the products, which run in float32 and are rounded
once into the output, as the delta-come kernels do.

Several fine-tunes in one batch: :class:`LowRankSet` concatenates every slot's factors (columns
of ``B``, rows of ``A`` side by side) and keeps for each row only the columns of its own slot (a
mask from the row ids, built on the device): one pair of GEMMs for any mix of tenants, no host
sync, so a CUDA graph captures it. The price is the products of every loaded slot for every row,
which is small for the ranks lowrank stores (127 for a 4096 x 4096 weight at alpha 1/16) and few
tenants; a grouped (SGMV-style) kernel would be the next step for many.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deltastore.codec import Encoded
from deltastore.codec.lowrank import LowRank

from .bitdelta import BitDeltaSigns, bitdelta_from_encoded
from .packed import PackedDeltaCoMe, checked_matrix, from_encoded
from .slots import SlotDeltas


@dataclass
class LowRankFactors:
    """A checked lowrank payload for an (m, n) weight: D^ = c A B^T."""

    shape: tuple[int, int]
    A: torch.Tensor  # float16 (m, r)
    B: torch.Tensor  # float16 (n, r)
    c: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[1])

    def to(self, device: torch.device | str) -> "LowRankFactors":
        return LowRankFactors(self.shape, self.A.to(device), self.B.to(device), self.c)

    def dense(self) -> torch.Tensor:
        """The float32 delta (m, n), as the codec decodes it (tests)."""
        return self.c * (self.A.float() @ self.B.float().T)


def lowrank_from_encoded(enc: Encoded, expect_shape: tuple[int, int] | None = None, what: str = "delta") -> LowRankFactors:
    """Check a lowrank payload with the codec's own checks (names, dtypes, shapes, rank, finite
    values) and against the base weight's shape; a clear error at load time on anything else."""
    m, n = checked_matrix(enc, LowRank, expect_shape, what)
    return LowRankFactors((m, n), enc.arrays["A"].contiguous(), enc.arrays["B"].contiguous(), float(enc.arrays["c"][0]))


def served_from_encoded(enc: Encoded, expect_shape: tuple[int, int] | None = None,
                        what: str = "delta") -> PackedDeltaCoMe | LowRankFactors | BitDeltaSigns:
    """A payload checked and viewed as what a lazy linear serves it from: lowrank factors, bitdelta
    signs, or packed delta-come tiers (:func:`~.packed.from_encoded`, which refuses every other codec with
    :class:`NotServableError`). The one place that knows which codecs are servable lazily."""
    if enc.codec == "lowrank":
        return lowrank_from_encoded(enc, expect_shape, what)
    if enc.codec == "bitdelta":
        return bitdelta_from_encoded(enc, expect_shape, what)
    return from_encoded(enc, expect_shape, what)


class LowRankSet(SlotDeltas):
    """One linear's lowrank deltas by slot (the fine-tune ids every delta set of a model shares)."""

    kind = "lowrank"

    def __init__(self, in_features: int, out_features: int, device: torch.device | str):
        super().__init__(in_features, out_features, device)
        self._built: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def _changed(self) -> None:
        self._built = None

    def tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B (n, R) float32, cA (m, R) float32 with each slot's c folded in, slot of each column (R,)):
        built once per add/drop/move (new tensors then, which a captured CUDA graph checks for)."""
        if self._built is None:
            items = sorted(self._slots.items())
            B = torch.cat([f.B.float() for _, f in items], dim=1)
            A = torch.cat([f.A.float() * f.c for _, f in items], dim=1)
            col = torch.cat([torch.full((f.rank,), s, dtype=torch.int64, device=self.device) for s, f in items])
            self._built = (B.contiguous(), A.contiguous(), col)
        return self._built

    def delta(self, x2: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """float32 (rows, out_features): each row's delta (zero for a row whose id holds no lowrank delta)."""
        B, A, col = self.tables()
        z = (x2.float() @ B) * (ids.reshape(-1, 1) == col.reshape(1, -1))  # (rows, R): a row keeps its own slot's columns
        return z @ A.T
