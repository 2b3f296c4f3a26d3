r"""Event shapes, with a small function compiled per shape that writes an event's CSV cells.

An event's *shape* is its structure: the keys of every object, in order, the length of every
list, and which positions hold an object or a list, recursively. Leaf types are not part of it:
``None``, text, numbers and booleans at one place all give the same column. Events of one shape
flatten to the same column names, so names are computed once per shape; and a function
compiled for the shape reads an event's leaves by position (unpacking ``dict.values()``: no key
lookups, no recursion) and formats them with one f-string. Audit events of one type nearly
always share a shape, which is why this pays: a day of 100,000 synthetic events has about ten.

The compiled ``render(event)`` returns, for an event whose top-level keys are the shape's:

- ``None`` when the event does not have this shape;
- its cells, quoted as ``csv.writer`` quotes them, joined by :data:`CELL_SEPARATOR` (the
  ASCII unit separator), as UTF-8 bytes: one f-string; only when the text holds a comma, a
  quote, CR or LF are the cells holding them cut out and quoted (:func:`quote_cells`);
- the list of its cells when a text holds the unit or the record separator itself (rare).

For ``{"id": "e1", "actor": {"userId": "u1", "userName": "Ann"}, "n": 3}`` it compiles to::

    def render(event):
     (v0, c2, v3,) = event.values()
     if type(c2) is not dict or tuple(c2) != k4: return None
     (v1, v2,) = c2.values()
     data = f"{'' if v0 is None else v0}\x1f{'' if v1 is None else v1}\x1f...".encode()
     if (123 in data or 91 in data) and _has_container((v0, v1, v2, v3, )): return None
     if 30 in data or data.count(31) != 3:
      return _cell_list(_cells, (v0, v1, v2, v3, ))
     if 34 in data or 44 in data or 10 in data or 13 in data:  # quote, comma, LF, CR
      return _quote(data)
     return data

Cells follow ``csv.writer`` with QUOTE_MINIMAL, as the community script wrote them: ``None``
is an empty cell, anything else is ``str()`` (for floats the same as ``repr``), and a cell
holding a comma, a double quote, CR or LF is quoted with its double quotes doubled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .flatten import flatten_event, iter_flat

# Bigger shapes are written through the generic path (same output): compiling a function per
# odd, huge event would cost more than it saves.
MAX_SHAPE_LEAVES = 1000
MAX_SHAPE_CONTAINERS = 200
# Shapes tried per (top-level keys, event type) before going to the exact structure lookup.
MAX_CANDIDATES = 16

# Between the cells of a rendered event, and after each event in a scratch file: ASCII's unit
# and record separators, which audit texts practically never hold (when one does, render
# returns a list instead).
CELL_SEPARATOR = b"\x1f"
RECORD_SEPARATOR = b"\x1e"

Render = Callable[[dict[str, Any]], "bytes | list[str] | None"]


# Every byte that makes csv.writer quote a cell (comma, CR, LF, double quote) as a double quote.
_QUOTING_TO_QUOTE = bytes.maketrans(b',\r\n', b'"""')
_SEPARATOR = CELL_SEPARATOR[0]  # as an int: bytes.find takes one without building a bytes


def quote_cells(data: bytes) -> bytes:
    """Quote, in separator-joined UTF-8 cells, those that ``csv.writer`` would quote.

    The bytes that call for quoting are found in one ``translate`` copy of ``data`` (each of
    them a double quote there), and only their cells are cut out and quoted: a rendered event
    holds one or two such cells among twenty-odd, and testing every cell four times cost 40 %
    more (``benchmarks/README.md``, "Fourth round").
    """
    marked = data.translate(_QUOTING_TO_QUOTE)
    at = marked.find(34)
    parts: list[bytes] = []
    done = 0  # data before this is in parts
    while at >= 0:
        start = data.rfind(_SEPARATOR, 0, at) + 1  # the cell's first byte
        end = data.find(_SEPARATOR, at)
        if end < 0:
            end = len(data)
        parts.append(data[done:start])
        parts.append(b'"' + data[start:end].replace(b'"', b'""') + b'"')
        done = end
        at = marked.find(34, end)
    parts.append(data[done:])
    return b"".join(parts)


def cell_text(value: Any) -> str:
    """One leaf as the text of its CSV cell, quoted as ``csv.writer`` quotes it."""
    if value is None:
        return ""
    text = value if type(value) is str else str(value)
    if "," in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def structure(event: dict[str, Any]) -> tuple[Any, ...]:
    """The exact shape key of ``event``: keys, list lengths and container positions."""
    key: list[Any] = []
    stack: list[Any] = [event]
    while stack:  # iterative: no recursion limit on odd payloads
        node = stack.pop()
        if type(node) is dict:
            key.append(tuple(node))
            children: Any = node.values()
        else:
            key.append(len(node))
            children = node
        kinds = tuple([1 if type(child) is dict else 2 if type(child) is list else 0
                       for child in children])
        key.append(kinds)
        stack.extend(child for child, kind in zip(children, kinds, strict=True) if kind)
    return tuple(key)


@dataclass(eq=False)
class Shape:
    """One shape: its column names, its collided names and its compiled ``render``."""

    number: int
    names: list[str]  # distinct column names, in order of first appearance in the event
    collided: list[str]  # a name per value overwritten by a later leaf of the same name
    render: Render
    source: str  # render's source, for reading (print it to see what a shape compiles to)


def _has_container(leaves: tuple[Any, ...]) -> bool:
    """Whether a value where the shape has a leaf is an object or a list: another shape."""
    return any(type(value) is dict or type(value) is list for value in leaves)


def _cell_list(cell_leaves: tuple[int, ...], leaves: tuple[Any, ...]) -> list[str]:
    """The event's cells as a list: for texts holding a separator."""
    return [cell_text(leaves[index]) for index in cell_leaves]


def compile_shape(event: dict[str, Any], number: int) -> Shape | None:
    """A :class:`Shape` for ``event``'s shape, or None if it is too big to compile.

    The caller guarantees that events handed to ``render`` have ``event``'s top-level keys;
    everything below the top level is checked by ``render`` itself.
    """
    plan = _plan(event)
    if plan is None:
        return None
    tree, leaf_count = plan
    row, collided = flatten_event(event)
    names = list(row)
    leaf_names = [name for name, _ in iter_flat(event)]
    if len(leaf_names) != leaf_count:  # the plan numbers leaves in iter_flat's order
        raise AssertionError("shape plan and iter_flat disagree on the leaves")
    last_leaf = {name: index for index, name in enumerate(leaf_names)}  # the last one wins
    cell_leaves = tuple(last_leaf[name] for name in names)

    constants: dict[str, Any] = {"_has_container": _has_container, "_cell_list": _cell_list,
                                 "_cells": cell_leaves, "_quote": quote_cells}
    body = ["def render(event):"]
    pending: list[tuple[tuple[Any, ...], str, bool]] = [(tree, "event", True)]
    while pending:  # parents before children: a child's variable comes from its parent
        (kind, spec, children, _), variable, top = pending.pop()
        if not top:  # the top level's keys were checked by the caller
            if kind == "dict":
                constant = f"k{len(constants)}"
                constants[constant] = spec
                body.append(f" if type({variable}) is not dict or tuple({variable}) != "
                            f"{constant}: return None")
            else:
                body.append(f" if type({variable}) is not list or len({variable}) != {spec}: "
                            "return None")
        targets = [f"v{child}" if isinstance(child, int) else f"c{child[3]}"
                   for child in children]
        if targets:
            source = f"{variable}.values()" if kind == "dict" else variable
            body.append(f" ({', '.join(targets)},) = {source}")
        pending.extend((child, f"c{child[3]}", False)
                       for child in reversed(children) if not isinstance(child, int))
    # A leaf overwritten by a later one of the same name has no cell: check its type here.
    for index in sorted(set(range(leaf_count)) - set(cell_leaves)):
        body.append(f" if type(v{index}) is dict or type(v{index}) is list: return None")
    cells = [f"v{index}" for index in cell_leaves]
    cell_separator, record_separator = CELL_SEPARATOR[0], RECORD_SEPARATOR[0]  # as ints
    joined = f"\\x{cell_separator:02x}".join(f"{{'' if {cell} is None else {cell}}}"
                                              for cell in cells)
    leaves = "".join(f"v{index}, " for index in range(leaf_count))
    body += [
        # Tested as UTF-8 bytes, which the scratch file wants anyway: ASCII characters are the
        # same bytes, and a test of bytes is a memchr even when the text is not ASCII. The
        # tests take the byte as an int: "b'{' in data" would first try b'{' as an int, and
        # raise and clear a TypeError each time.
        f" data = f\"{joined}\".encode()",
        # An object or a list where the shape has a leaf shows as braces or brackets; texts
        # may hold them too, so only then are the leaves' types checked.
        " if (123 in data or 91 in data) and _has_container((" + leaves + ")): return None",
        f" if {record_separator} in data or data.count({cell_separator}) != "
        f"{max(len(cells) - 1, 0)}:",
        "  return _cell_list(_cells, (" + leaves + "))",
        " if 34 in data or 44 in data or 10 in data or 13 in data:  # quote, comma, LF, CR",
        "  return _quote(data)",
        " return data",
    ]
    source = "\n".join(body)
    namespace = dict(constants)
    exec(compile(source, f"<shape {number}>", "exec"), namespace)
    return Shape(number=number, names=names, collided=collided, render=namespace["render"],
                 source=source)


def _plan(event: dict[str, Any]) -> tuple[tuple[Any, ...], int] | None:
    """The event's containers as a tree, leaves numbered depth first; None if too big.

    A container is ``(kind, keys or length, children, number)``; a leaf child is its index.
    """
    leaves = 0
    containers = 0

    def visit(node: Any) -> tuple[Any, ...]:
        nonlocal leaves, containers
        containers += 1
        number = containers
        if containers > MAX_SHAPE_CONTAINERS:
            raise _TooBig
        children: list[Any] = []
        for child in (node.values() if type(node) is dict else node):
            if type(child) is dict or type(child) is list:
                children.append(visit(child))  # its leaves come before the next sibling's
            else:
                children.append(leaves)
                leaves += 1
                if leaves > MAX_SHAPE_LEAVES:
                    raise _TooBig
        if type(node) is dict:
            return ("dict", tuple(node), children, number)
        return ("list", len(node), children, number)

    try:
        tree = visit(event)
    except _TooBig:
        return None
    return tree, leaves


class _TooBig(Exception):
    """The event's shape is too big to compile."""
