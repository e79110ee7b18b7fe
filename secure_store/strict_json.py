"""The one strict reader of signed JSON bodies (audit entries, receipts): canonical form or nothing.

A signature covers bytes, but a reader acts on values; two readers that disagree on what
some bytes mean (a duplicated key read first-wins by one and last-wins by another, ``true``
taken for ``1``, a raw non-ASCII byte) can give two verdicts on the same evidence. So a
signed body must be in its one canonical form (docs/FORMAT.md, "Canonical JSON"), and this
parser refuses anything else: no whitespace, keys unique and sorted, the fixed escapes,
integers without sign tricks or leading zeros, and non-integer numbers only where a caller
allows them (``details`` of version-1 audit entries, for the clock values early firmware
wrote). Recursive descent over the bytes, regular expressions for the tokens.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32
INT_MIN, INT_MAX = -(2 ** 63), 2 ** 63 - 1

_STRING = re.compile(rb'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\bfnrt]|\\u[0-9a-f]{4})*)"')
_INT = re.compile(rb"-?(?:0|[1-9][0-9]*)")
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_UESC = re.compile(rb"\\u([0-9a-f]{4})")
_SHORT = {0x08, 0x09, 0x0A, 0x0C, 0x0D}  # written \b \t \n \f \r, never \u00XX


class StrictJSONError(ValueError):
    """The bytes are not canonical JSON; the message says what and at which byte."""


def loads(data: bytes, *, floats_in: frozenset[str] = frozenset()) -> Any:
    """Parse canonical JSON; ``floats_in``: top-level keys under which non-integer numbers may appear."""
    if not isinstance(data, (bytes, bytearray)):
        raise StrictJSONError("not bytes")
    bad = re.search(rb"[^\x20-\x7e]", data) if bytes(data).translate(None, _PRINTABLE) else None
    if bad:
        raise StrictJSONError(f"byte {bad.start()} is 0x{data[bad.start()]:02x}: only printable ASCII is allowed")
    fast = _fast(bytes(data))
    if fast is not _SLOW:
        return fast
    value, end = _Parser(bytes(data), floats_in).value(0, 0, False)
    if end != len(data):
        raise StrictJSONError(f"unexpected bytes at byte {end}")
    return value


_SLOW = object()
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_PRINTABLE = bytes(range(0x20, 0x7F))


def _fast(data: bytes) -> Any:
    """The common case at C speed: re-encoding the parsed value gives the very same bytes.

    Equal bytes mean J2-J5 and J7 hold (the canonical writer made them). What re-encoding
    cannot see is sent to the parser below, which decides and says why: any non-integer
    number or NaN, a digit run long enough for an integer outside 64 bits, a ``\\ud``
    escape (a surrogate, maybe lone), more brackets than the depth limit.
    """
    if b"\\ud" in data or _LONG_DIGITS.search(data) or data.count(b"[") + data.count(b"{") > MAX_DEPTH:
        return _SLOW
    try:
        value = json.loads(data, parse_float=_refuse, parse_constant=_refuse)
        same = dumps(value) == data
    except (ValueError, TypeError, RecursionError, _Refused):
        return _SLOW
    return value if same else _SLOW


class _Refused(Exception):
    pass


def _refuse(token: str) -> None:
    raise _Refused(token)


class _Parser:
    def __init__(self, data: bytes, floats_in: frozenset[str]) -> None:
        self.data, self.floats_in = data, floats_in

    def value(self, pos: int, depth: int, floats: bool) -> tuple[Any, int]:
        if depth > MAX_DEPTH:
            raise StrictJSONError(f"nested deeper than {MAX_DEPTH} at byte {pos}")
        d = self.data
        c = d[pos:pos + 1]
        if c == b"{":
            return self.obj(pos, depth, floats)
        if c == b"[":
            return self.array(pos, depth, floats)
        if c == b'"':
            return self.string(pos)
        for word, val in ((b"true", True), (b"false", False), (b"null", None)):
            if d.startswith(word, pos):
                return val, pos + len(word)
        m = _NUMBER.match(d, pos)
        if m:
            token = m.group()
            if _INT.fullmatch(token):
                if token == b"-0":
                    raise StrictJSONError(f"-0 at byte {pos}")
                n = int(token)
                if not INT_MIN <= n <= INT_MAX:
                    raise StrictJSONError(f"integer out of the signed 64-bit range at byte {pos}")
                return n, m.end()
            if not floats:
                raise StrictJSONError(f"non-integer number at byte {pos}")
            return float(token), m.end()
        raise StrictJSONError(f"no JSON value at byte {pos}")

    def string(self, pos: int) -> tuple[str, int]:
        m = _STRING.match(self.data, pos)
        if not m:
            raise StrictJSONError(f"bad string at byte {pos}")
        raw = m.group(1)
        if b"\\u" in raw:
            units = [int(u, 16) for u in _UESC.findall(raw)]
            for i, u in enumerate(units):
                if 0x20 <= u <= 0x7E or u in _SHORT:
                    raise StrictJSONError(f"needless \\u escape in the string at byte {pos}")
            text = json.loads(b'"' + raw + b'"')
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise StrictJSONError(f"unpaired surrogate in the string at byte {pos}") from None
            return text, m.end()
        return (json.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode("ascii")), m.end()

    def obj(self, pos: int, depth: int, floats: bool) -> tuple[dict, int]:
        out: dict[str, Any] = {}
        pos += 1
        if self.data[pos:pos + 1] == b"}":
            return out, pos + 1
        last: str | None = None
        while True:
            if self.data[pos:pos + 1] != b'"':
                raise StrictJSONError(f"expected a key at byte {pos}")
            key, pos = self.string(pos)
            if last is not None and key <= last:  # str order is code-point order
                raise StrictJSONError(f"key {key!r} {'repeated' if key == last else 'out of order'} at byte {pos}")
            if self.data[pos:pos + 1] != b":":
                raise StrictJSONError(f"expected ':' at byte {pos}")
            sub_floats = floats or (depth == 0 and key in self.floats_in)
            out[key], pos = self.value(pos + 1, depth + 1, sub_floats)
            last = key
            c = self.data[pos:pos + 1]
            if c == b"}":
                return out, pos + 1
            if c != b",":
                raise StrictJSONError(f"expected ',' or '}}' at byte {pos}")
            pos += 1

    def array(self, pos: int, depth: int, floats: bool) -> tuple[list, int]:
        out: list[Any] = []
        pos += 1
        if self.data[pos:pos + 1] == b"]":
            return out, pos + 1
        while True:
            item, pos = self.value(pos, depth + 1, floats)
            out.append(item)
            c = self.data[pos:pos + 1]
            if c == b"]":
                return out, pos + 1
            if c != b",":
                raise StrictJSONError(f"expected ',' or ']' at byte {pos}")
            pos += 1


def dumps(obj: Any) -> bytes:
    """The canonical form (what every writer signs): sorted keys, no whitespace, ASCII escapes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
