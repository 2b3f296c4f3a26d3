"""Import records read and written in bounded memory: event ids kept in scratch files.

An import record (``imports/<day>.json``) lists, per accepted chunk, the event ids it carried:
a million events make a 45 MiB file, which parsed whole is about 100 MB of Python objects, and
its set of pushed ids as much again (issue 11). Here the record keeps its format (``eventIds``
lists, indented as ``orjson.OPT_INDENT_2`` writes them; existing records read as before), but
an entry's ids live in an :class:`IdFile` in scratch while a day is pushed:

- reading: a record up to :data:`WHOLE_RECORD_BYTES` is parsed whole; a bigger one is streamed
  (:func:`read_json_stream`), each ``eventIds`` array going to an id file as it is read;
- writing: :func:`write_record` writes the entries with ``orjson`` and streams each id file into
  its place, so a save holds no list of ids and no serialized copy of the record;
- "already pushed?": :class:`IdSet`, a Python set up to :data:`SET_IDS` ids, else a scratch
  SQLite table.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

ID_BATCH = 10_000  # ids per write or query
BLOCK = 1 << 20  # bytes per read of a streamed record
# Bytes of ids decoded at a time: orjson's parser allocates about 15 times its input while it
# works (a 1 MiB array of ids peaks at 16 MB), so id files are decoded in small blocks.
ID_BLOCK = 64 << 10
WHOLE_RECORD_BYTES = 8 << 20  # records up to this are parsed whole: about 200,000 ids
SET_IDS = 200_000  # id sets up to this many ids are Python sets (about 20 MB), else SQLite
_SENTINEL = "\x00pigment-audit-ids-{}\x00"
_SENTINEL_BYTES = re.compile(rb'"\\u0000pigment-audit-ids-(\d+)\\u0000"')


class IdFile:
    """An entry's event ids in a scratch file: one JSON-encoded id per line, in order.

    Lines are separated (not ended) by line feeds, so the file with each line feed replaced by
    ``,`` and an indent is the body of the record's JSON array, written in C-level passes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")

    def __len__(self) -> int:
        return self.count

    def extend(self, ids: list[Any]) -> None:
        """Append ids (decoded values)."""
        if ids:
            self.extend_encoded(list(map(orjson.dumps, ids)))

    def extend_encoded(self, tokens: list[bytes]) -> None:
        """Append ids already JSON-encoded (as a record holds them)."""
        if tokens:
            with open(self.path, "ab") as handle:
                handle.write((b"\n" if self.count else b"") + b"\n".join(tokens))
            self.count += len(tokens)

    def blocks(self) -> Iterator[bytes]:
        """The file's bytes, a block at a time."""
        with open(self.path, "rb") as handle:
            while block := handle.read(ID_BLOCK):
                yield block

    def batches(self) -> Iterator[list[Any]]:
        """The ids, decoded, a batch (of about a block) at a time."""
        rest = b""
        for block in self.blocks():
            lines = (rest + block).split(b"\n")
            rest = lines.pop()
            if lines:
                yield orjson.loads(b"[" + b",".join(lines) + b"]")
        if rest:
            yield orjson.loads(b"[" + rest + b"]")

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches():
            yield from batch


def id_batches(ids: IdFile | list[Any]) -> Iterator[list[Any]]:
    """An entry's ids (an id file, or a list as a small record holds them), in batches."""
    if isinstance(ids, IdFile):
        yield from ids.batches()
    else:
        for start in range(0, len(ids), ID_BATCH):
            yield ids[start:start + ID_BATCH]


class IdSet:
    """A set of ids for ``in`` and ``len``: in memory up to :data:`SET_IDS`, else in SQLite."""

    def __init__(self, work: Path, sources: Iterable[IdFile | list[Any]]) -> None:
        sources = list(sources)
        self.ids: set[Any] | None = None
        self.connection: sqlite3.Connection | None = None
        if sum(map(len, sources)) <= SET_IDS:
            self.ids = set()
            for source in sources:
                for batch in id_batches(source):
                    self.ids.update(batch)
            return
        work.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(work / f"ids-{id(self):x}.sqlite")
        self.connection.executescript(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -4096;"
            "CREATE TABLE ids (id PRIMARY KEY) WITHOUT ROWID;")
        for source in sources:
            for batch in id_batches(source):
                self.connection.executemany("INSERT OR IGNORE INTO ids VALUES (?)",
                                            zip(batch))
        self._count = self.connection.execute("SELECT COUNT(*) FROM ids").fetchone()[0]

    def __contains__(self, value: object) -> bool:
        if self.ids is not None:
            return value in self.ids
        assert self.connection is not None
        return self.connection.execute("SELECT 1 FROM ids WHERE id = ?",
                                       (value,)).fetchone() is not None

    def __len__(self) -> int:
        return len(self.ids) if self.ids is not None else self._count

    def __iter__(self) -> Iterator[Any]:
        if self.ids is not None:
            return iter(self.ids)
        assert self.connection is not None
        return (row[0] for row in self.connection.execute("SELECT id FROM ids"))

    def close(self) -> None:
        """Drop the SQLite file's connection (the file goes with the scratch folder)."""
        if self.connection is not None:
            self.connection.close()


def write_json(handle: IO[bytes], value: Any, *, indent: bool = True) -> None:
    """Write ``value`` as JSON, each entry's ``eventIds`` (an id file or a list) streamed.

    The same bytes as ``orjson.dumps(value, option=OPT_INDENT_2)`` (or without the option)
    would give with the lists in place, without building them: the value is written with a
    placeholder per ``eventIds``, and each placeholder replaced by its ids as they are read.
    """
    lists: list[IdFile | list[Any]] = []

    def hollow(item: Any) -> Any:
        if isinstance(item, dict):
            copy = {}
            for key, inner in item.items():
                if key == "eventIds" and isinstance(inner, (IdFile, list)):
                    copy[key] = _SENTINEL.format(len(lists))
                    lists.append(inner)
                else:
                    copy[key] = hollow(inner)
            return copy
        if isinstance(item, list):
            return [hollow(inner) for inner in item]
        return item

    text = orjson.dumps(hollow(value), option=orjson.OPT_INDENT_2 if indent else 0)
    position = 0
    for match in _SENTINEL_BYTES.finditer(text):
        handle.write(text[position:match.start()])
        position = match.end()
        ids = lists[int(match.group(1))]
        if not len(ids):
            handle.write(b"[]")
            continue
        if indent:
            line_start = text.rfind(b"\n", 0, match.start()) + 1
            depth = len(text[line_start:match.start()]) - len(
                text[line_start:match.start()].lstrip(b" "))
            separator, opening, closing = (b",\n" + b" " * (depth + 2), b"[\n" + b" " * (
                depth + 2), b"\n" + b" " * depth + b"]")
        else:
            separator, opening, closing = b",", b"[", b"]"
        handle.write(opening)
        if isinstance(ids, IdFile):
            for block in ids.blocks():
                handle.write(block.replace(b"\n", separator))
        else:
            handle.write(separator.join(map(orjson.dumps, ids)))
        handle.write(closing)
    handle.write(text[position:])


# --- reading: a streamed JSON parser that sends eventIds arrays to id files -----------------

_TOKEN = re.compile(rb'[ \t\r\n]*(?:("[^"\\]*(?:\\.[^"\\]*)*")|([{}\[\]:,])|'
                    rb'([^ \t\r\n{}\[\]:,"]+))')


def _tokens(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(kind, bytes)`` per JSON token: 1 a string, 2 punctuation, 3 a number or literal."""
    buffer, position, ended = b"", 0, False
    match = _TOKEN.match
    while True:
        found = match(buffer, position)
        if found is None or (found.end() == len(buffer) and not ended):
            if ended:
                if buffer[position:].strip():
                    raise ValueError(f"not JSON near {buffer[position:position + 40]!r}")
                return
            block = stream.read(BLOCK)
            ended = not block
            buffer, position = buffer[position:] + block, 0
            continue
        position = found.end()
        kind = found.lastindex
        yield kind, found.group(kind)  # type: ignore[arg-type]


def read_json_stream(stream: IO[bytes], new_id_file: Any) -> Iterator[Any]:
    """The top-level JSON values of ``stream`` (one, or one per line), parsed in bounded
    memory: the array of each ``eventIds`` key goes into ``new_id_file()``'s id file, which
    takes its place in the value."""
    stack: list[list[Any]] = []  # frames: [container, pending key]; ids: [IdFile, tokens]
    loads = orjson.loads
    for kind, text in _tokens(stream):
        frame = stack[-1] if stack else None
        if frame is not None and type(frame[0]) is IdFile:
            if kind == 2:
                if text == b"]":
                    frame[0].extend_encoded(frame[1])
                    stack.pop()
                    value: Any = frame[0]
                elif text == b",":
                    continue
                else:
                    raise ValueError("an eventIds list holds something other than ids")
            else:
                frame[1].append(text)
                if len(frame[1]) >= ID_BATCH:
                    frame[0].extend_encoded(frame[1])
                    frame[1] = []
                continue
        elif kind == 2:
            if text in b",:":
                continue
            if text == b"{" or text == b"[":
                if (text == b"[" and frame is not None and type(frame[0]) is dict
                        and frame[1] == "eventIds"):
                    stack.append([new_id_file(), []])
                else:
                    stack.append([{} if text == b"{" else [], None])
                continue
            if frame is None:
                raise ValueError(f"unexpected {text!r}")
            stack.pop()
            value = frame[0]
        else:
            value = loads(text)
            if frame is not None and type(frame[0]) is dict and frame[1] is None:
                frame[1] = value  # a key
                continue
        if not stack:
            yield value
            continue
        parent = stack[-1]
        if type(parent[0]) is dict:
            parent[0][parent[1]] = value
            parent[1] = None
        else:
            parent[0].append(value)
    if stack:
        raise ValueError("the JSON ends inside a value")
