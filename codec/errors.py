"""Errors raised by codecs. The store maps them to its own error root."""


class CodecError(ValueError):
    """A codec was asked for something it cannot do (bad parameters, bad input, bad payload)."""


class UnknownCodecError(CodecError, KeyError):
    """No codec is registered under this id."""

    def __init__(self, codec_id: str, known: list[str]):
        self.codec_id = codec_id
        super().__init__(f"unknown codec {codec_id!r}; known codecs: {', '.join(sorted(known))}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class CorruptPayloadError(CodecError):
    """An encoded payload does not decode: truncated, altered, or from another codec version."""
