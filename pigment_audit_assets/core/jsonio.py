"""JSON in and out: orjson, with exact answers where orjson alone would change the data.

- Integers beyond 64 bits (``123456789012345678901234567890``): ``orjson.loads`` turns them
  into floats and ``orjson.dumps`` refuses them. :func:`loads` parses a document that holds an
  integer literal of 19 digits or more again with Python's ``json`` (exact integers), and
  :func:`dumps` writes such integers as their digits, everything else byte for byte as orjson
  writes it (``json.dumps`` would not: it writes ``1.5e-07`` where orjson writes ``1.5e-7``).
- Nesting: ``orjson.dumps`` stops at 255 levels (``TypeError: Recursion limit reached``).
  :func:`dumps` raises :class:`NestingTooDeep` for it, so that a caller can set the value
  aside (the scan rejects such an event); ``dumps(value, any_depth=True)`` writes it anyway
  (for the rejects file), without recursion. ``orjson.loads`` parses up to 1,024 levels
  (``json`` about 1,000, the interpreter's recursion limit); for a page nested deeper,
  :func:`loads` falls back to a parser without recursion (``json``'s own string scanner and
  number syntax, so the values are those ``json.loads`` gives), so that the event can be
  rejected rather than the page refused.

- Lone surrogates (``"\ud83d"``, half of an emoji cut off): JSON allows the escape, but
  UTF-8 cannot hold it, so ``orjson.loads`` refuses the whole document and ``orjson.dumps``
  refuses the string. :func:`loads` reads such a document with ``json`` (so one odd event
  does not refuse its page); :func:`dumps` raises :class:`NotUnicode` for a value holding
  one, so that the scan can reject that event, and ``any_depth=True`` writes the string with
  ``json``'s ASCII escape instead (for the rejects file).

Otherwise validity is orjson's: :func:`loads` asks ``json`` only about documents orjson has
accepted or refused for a surrogate alone (``json`` would also accept ``NaN``); past orjson's
depth, the stack parser refuses ``NaN``, ``Infinity`` and numbers too big for a float as
orjson does. Errors are orjson's :data:`JSONDecodeError` either way.

The check for 19 digits costs about 0.6 µs per 600-byte event line and 0.7 ms per page of
1,000 events (a quarter to a half of orjson's own parse); documents without such a run of
digits are parsed once.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError
MAX_DEPTH = 254  # the most nested containers orjson.dumps writes; it fails at 255

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1  # orjson's integer range, both ways
_BIG_INT_MESSAGE = "Integer exceeds 64-bit range"
_DEPTH_MESSAGE = "Recursion limit reached"
_SURROGATE_MESSAGE = "str is not valid UTF-8: surrogates not allowed"
# Every digit to "0", every other byte to a space: a run of 19 digits becomes 19 zeros, found
# with one translate and one find (a regular expression is ten times slower on a page).
_DIGITS_TO_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_NINETEEN_DIGITS = b"0" * 19  # 2**63 has 19 digits: shorter integers fit in 64 bits


class Unwritable(orjson.JSONEncodeError):
    """A parsed value a raw file cannot hold; its text is the reason, for a reject."""


class NestingTooDeep(Unwritable):
    """A value nested deeper than :data:`MAX_DEPTH` levels, which orjson cannot write."""


class NotUnicode(Unwritable):
    """A value holding a lone UTF-16 surrogate, which UTF-8 (and so orjson) cannot hold."""


NOT_UNICODE = ("holds text that is not valid Unicode (a lone UTF-16 surrogate escape such as "
               "\\ud83d, half of a character), which a UTF-8 file cannot hold")


def loads(data: bytes) -> Any:
    """Parse JSON as ``orjson.loads`` does, except that integers beyond 64 bits stay exact."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        if "surrogate" in str(error):  # valid JSON all the same: json reads it
            try:
                return json.loads(data)
            except RecursionError:
                return _loads_deep(data)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise error from None
        if "depth limit" not in str(error):
            raise
        return _loads_deep(data)  # deeper than orjson (and json) parse
    if data.translate(_DIGITS_TO_ZERO).find(_NINETEEN_DIGITS) < 0:
        return value  # no integer of 19 digits or more: orjson's value is exact
    try:
        return json.loads(data)  # orjson accepted it: json reads the same document
    except RecursionError:  # between json's depth and orjson's 1,024
        return _loads_deep(data)


def dumps(value: Any, *, any_depth: bool = False) -> bytes:
    """``orjson.dumps(value)``, with integers beyond 64 bits written as their digits.

    Raises :class:`NestingTooDeep` for a value nested deeper than :data:`MAX_DEPTH` levels,
    and :class:`NotUnicode` for one holding a lone surrogate, unless ``any_depth`` (which
    writes such a string with ``json``'s ``\\uXXXX`` escape).
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as error:
        message = str(error)
        if not any_depth:
            if message == _DEPTH_MESSAGE:
                raise NestingTooDeep(f"nested deeper than {MAX_DEPTH} levels") from None
            if message == _SURROGATE_MESSAGE:
                raise NotUnicode(NOT_UNICODE) from None
        if message not in (_BIG_INT_MESSAGE, _DEPTH_MESSAGE, _SURROGATE_MESSAGE):
            raise
    return _dumps_walk(value, None if any_depth else MAX_DEPTH)


def _text(text: str, escape: bool) -> bytes:
    """A string as orjson writes it; one orjson cannot write (a lone surrogate) with
    ``json``'s ASCII escapes if ``escape``, else :class:`NotUnicode`."""
    try:
        return orjson.dumps(text)
    except orjson.JSONEncodeError:
        if not escape:
            raise NotUnicode(NOT_UNICODE) from None
        return json.dumps(text).encode()  # \ud83d, and pure ASCII


_END = object()


def _dumps_walk(value: Any, max_depth: int | None) -> bytes:
    """What orjson would write for ``value`` if it took any integer and any depth.

    Containers are walked with a stack, not recursion; each leaf and key is written by orjson
    itself (an integer beyond 64 bits as ``str``), so the bytes are orjson's.
    """
    out: list[bytes] = []
    # Per open container: its items, whether it is an object, whether an item was written.
    open_containers: list[list[Any]] = []

    def start(item: Any) -> None:
        if type(item) is dict or type(item) is list:
            if max_depth is not None and len(open_containers) >= max_depth:
                raise NestingTooDeep(f"nested deeper than {max_depth} levels")
            is_object = type(item) is dict
            out.append(b"{" if is_object else b"[")
            open_containers.append([iter(item.items() if is_object else item), is_object,
                                    False])
        elif type(item) is int and not _INT64_MIN <= item <= _UINT64_MAX:
            out.append(str(item).encode())
        elif type(item) is str:
            out.append(_text(item, max_depth is None))
        else:
            out.append(orjson.dumps(item))  # raises as orjson does for what it cannot write

    start(value)
    while open_containers:
        container = open_containers[-1]
        item = next(container[0], _END)
        if item is _END:
            out.append(b"}" if container[1] else b"]")
            open_containers.pop()
            continue
        if container[2]:
            out.append(b",")
        container[2] = True
        if container[1]:
            key, item = item
            if type(key) is not str:
                raise orjson.JSONEncodeError("Dict key must be str")
            out.append(_text(key, max_depth is None) + b":")
        start(item)
    return b"".join(out)


_SPACE = re.compile(r"[ \t\n\r]*").match
_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?").match  # json's, ASCII
_LITERALS = {"true": True, "false": False, "null": None}


def _loads_deep(data: bytes) -> Any:
    """Parse JSON nested to any depth, with a stack instead of recursion (slow: only for
    documents nested deeper than orjson parses). Raises :data:`JSONDecodeError`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JSONDecodeError(f"not UTF-8 ({error.reason})", "", error.start) from None
    try:
        return _parse_deep(text)
    except JSONDecodeError:
        raise
    except (json.JSONDecodeError, ValueError) as error:  # scanstring's; int()'s digit limit
        raise JSONDecodeError(str(error), text, getattr(error, "pos", 0)) from None


def _parse_deep(text: str) -> Any:

    def fail(what: str, at: int) -> JSONDecodeError:
        return JSONDecodeError(what, text, at)

    def key_at(at: int) -> tuple[str, int]:
        if text[at:at + 1] != '"':
            raise fail("expecting a property name in double quotes", at)
        key, at = scanstring(text, at + 1, True)
        at = _SPACE(text, at).end()
        if text[at:at + 1] != ":":
            raise fail("expecting ':'", at)
        return key, _SPACE(text, at + 1).end()

    # Per open container: the container, and for an object the key of the value to come.
    stack: list[list[Any]] = []
    at = _SPACE(text, 0).end()
    while True:
        char = text[at:at + 1]
        if char == "{" or char == "[":
            at = _SPACE(text, at + 1).end()
            if text[at:at + 1] == ("}" if char == "{" else "]"):
                value: Any = {} if char == "{" else []
                at += 1
            elif char == "{":
                key, at = key_at(at)
                stack.append([{}, key])
                continue
            else:
                stack.append([[], None])
                continue
        elif char == '"':
            value, at = scanstring(text, at + 1, True)
        elif (number := _NUMBER(text, at)) is not None:
            integer, fraction, exponent = number.groups()
            value = (int(integer) if fraction is None and exponent is None
                     else float(integer + (fraction or "") + (exponent or "")))
            if value in (float("inf"), float("-inf")):
                raise fail("number is infinity when parsed as double", at)
            at = number.end()
        else:
            for literal, meaning in _LITERALS.items():
                if text.startswith(literal, at):
                    value, at = meaning, at + len(literal)
                    break
            else:
                raise fail("expecting a value", at)
        # A value is complete: put it in its container, closing those it completes.
        while True:
            if not stack:
                if _SPACE(text, at).end() != len(text):
                    raise fail("extra data", at)
                return value
            frame = stack[-1]
            container = frame[0]
            is_object = type(container) is dict
            if is_object:
                container[frame[1]] = value
            else:
                container.append(value)
            at = _SPACE(text, at).end()
            char = text[at:at + 1]
            if char == ",":
                at = _SPACE(text, at + 1).end()
                if is_object:
                    frame[1], at = key_at(at)
                break
            if char != ("}" if is_object else "]"):
                raise fail("expecting ',' or a closing bracket", at)
            at += 1
            stack.pop()
            value = container
