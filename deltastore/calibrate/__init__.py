"""Calibration: passes that run the base model on the user's text before encoding.

What runs is what the codec declares in ``Codec.needs``: ``"hessian"`` collects each linear's
input Hessian (GPTQ compensation in delta-come); ``"model"`` runs a codec's own pre-pass
(bitdelta's scale distillation, deltadq's group-size search). These modules use a store only
through :class:`deltastore.protocols.StoreView`.
"""

from .hessians import calib_windows, collect_hessians, load_base_model, read_calib_lines
from .tuning import tune_codec

__all__ = ["calib_windows", "collect_hessians", "load_base_model", "read_calib_lines", "tune_codec"]
