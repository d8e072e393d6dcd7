"""Delta codecs: a fine-tuned tensor (and its base) in, an encoded payload out, and back.

Pure torch: this package knows nothing of the store. See CODECS.md for each method.
"""

from .base import Codec, EncodeContext, Encoded, check_pair
from .errors import CodecError, CorruptPayloadError, UnknownCodecError
from .registry import codec_class, get_codec, list_codecs, register_codec
from .serialize import from_bytes, to_bytes
from . import lossless  # noqa: F401  (registers)
from . import bitdelta, dare, delta_come, deltadq, lowrank  # noqa: F401  (register the lossy codecs)

__all__ = [
    "Codec",
    "CodecError",
    "CorruptPayloadError",
    "EncodeContext",
    "Encoded",
    "UnknownCodecError",
    "check_pair",
    "codec_class",
    "from_bytes",
    "get_codec",
    "list_codecs",
    "register_codec",
    "to_bytes",
]
