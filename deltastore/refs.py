"""Names and REFs: what the user types, checked before it touches the catalog.

REF syntax: ``NAME``, ``NAME@v3``, ``NAME@latest``, ``NAME@<tag>``, ``NAME@<manifest-sha-prefix>``
(at least 6 hex digits, with or without ``sha256:``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import BadNameError, UnknownRefError

# [0-9], not \d (which takes any Unicode digit: "v\u0661" is Arabic-Indic 1, and int() reads it), and
# \Z, not $ (which also matches before a final newline: "v1\n" would be v1)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}\Z")
_VERSION = re.compile(r"^v([0-9]+)\Z")
_HEX = re.compile(r"^(?:sha256:)?([0-9a-f]{6,64})\Z")
#: version numbers are positive and below 2**31 (the catalog's integer column, ``records``' bound)
MAX_VERSION = (1 << 31) - 1


def check_name(name: str, what: str = "model name") -> str:
    """Names become path components and CLI words: letters, digits, ``. _ + -``; no ``/``, ``..``,
    control characters or leading punctuation."""
    if not isinstance(name, str) or not name:
        raise BadNameError(f"{what} is empty")
    bad = [c for c in name if ord(c) < 32 or ord(c) == 127]
    if bad:
        raise BadNameError(f"{what} {name!r} contains control characters")
    if "/" in name or "\\" in name:
        raise BadNameError(f"{what} {name!r} contains a slash; use letters, digits, '.', '_', '+', '-'")
    if ".." in name:
        raise BadNameError(f"{what} {name!r} contains '..'")
    if "@" in name:
        raise BadNameError(f"{what} {name!r} contains '@', which separates a name from its version in a REF")
    if not _NAME.match(name):
        raise BadNameError(f"{what} {name!r} is not allowed: start with a letter or digit, then letters, digits, '.', '_', '+', '-' (at most 200)")
    if what == "tag name" and (_VERSION.match(name) or name == "latest"):
        raise BadNameError(f"tag name {name!r} would shadow a version REF; pick another")
    return name


@dataclass(frozen=True)
class Ref:
    model: str
    version: int | None = None  # vN
    tag: str | None = None
    manifest_prefix: str | None = None  # hex
    latest: bool = False

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.model}@v{self.version}"
        if self.tag is not None:
            return f"{self.model}@{self.tag}"
        if self.manifest_prefix is not None:
            return f"{self.model}@{self.manifest_prefix}"
        return f"{self.model}@latest"


def parse_ref(text: str) -> Ref:
    name, at, rev = text.partition("@")
    try:
        check_name(name)
    except BadNameError as e:
        raise UnknownRefError(f"bad REF {text!r}: {e}") from None
    if not at or rev == "latest":
        if at and not rev:
            raise UnknownRefError(f"bad REF {text!r}: nothing after '@'")
        return Ref(name, latest=True)
    if m := _VERSION.match(rev):
        digits = m.group(1).lstrip("0") or "0"
        if len(digits) > len(str(MAX_VERSION)) or int(digits) > MAX_VERSION:  # before int(): 5,000 digits raise
            raise UnknownRefError(f"bad REF {text[:80]!r}: version number too large (at most {MAX_VERSION})")
        return Ref(name, version=int(digits))
    if m := _HEX.match(rev):
        # a tag may also look like hex; the resolver tries tags first
        return Ref(name, manifest_prefix=m.group(1), tag=rev)
    if not rev:
        raise UnknownRefError(f"bad REF {text!r}: nothing after '@'")
    if rev[:1] == "v" and rev[1:].isdigit():  # digits _VERSION refused: other scripts' ("v\u0661"), "v\u00b2"
        raise UnknownRefError(f"bad REF {text[:80]!r}: a version number is written in ASCII digits (v1, v2, ...)")
    try:  # what no tag can be named ("v1\n", "x y") names nothing: said so, not looked up as a tag
        check_name(rev, "tag name")
    except BadNameError as e:
        raise UnknownRefError(f"bad REF {text[:80]!r}: {e}") from None
    return Ref(name, tag=rev)
