"""The CSV writer against the community script's own algorithm, on random nested events.

The writer takes shortcuts (shapes, generated code, a fast path for cells that need no
quoting); this checks them against the plain algorithm of ``create_audit_csv``: flatten every
event, count columns with a ``Counter``, order them with ``most_common``, and write rows with
``csv.DictWriter``. Seeded, so a failure can be replayed.
"""

from __future__ import annotations

import csv
import io
import random
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from pigment_audit_assets.core import shapes, table
from pigment_audit_assets.core.flatten import flatten_event
from pigment_audit_assets.core.table import write_csv

# Texts chosen to hit every quoting rule: commas, quotes, CR, LF, braces and brackets (which
# the fast path treats as suspect), the separators the writer uses inside its scratch file,
# NUL, non-ASCII, empty, and "None"-looking text.
TEXTS = ["plain", "", "a,b", 'say "hi"', "line\nbreak", "cr\rhere", "crlf\r\n", "{not json}",
         "[1, 2]", "unit\x1fseparator", "record\x1eseparator", "nul\x00byte", "日本 ✓ é 🎉",
         " padded ", "None", "True", "0", ",", '"', "\n"]
KEYS = ["a", "b", "c", "a_b", "b_c", "x", "1", "0", "é", "k k", "_", ""]


def random_leaf(rng: random.Random) -> Any:
    kind = rng.randrange(8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 7, 2**63 - 1, -(2**63)])
    if kind == 3:
        return rng.choice([0.0, 1.5, -2.25e-7, 1e300, 0.1])
    return rng.choice(TEXTS)


def random_node(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth >= 3 or roll < 0.6:
        return random_leaf(rng)
    if roll < 0.8:
        return {rng.choice(KEYS): random_node(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [random_node(rng, depth + 1) for _ in range(rng.randrange(4))]


def random_event(rng: random.Random, number: int) -> dict[str, Any]:
    event: dict[str, Any] = {"id": f"e{number}", "eventType": rng.choice(["A", "B", "C"])}
    for _ in range(rng.randrange(5)):
        event[rng.choice(KEYS)] = random_node(rng, 1)
    return event


def script_csv(events: list[dict[str, Any]], path: Path) -> None:
    """What ``create_audit_csv`` writes for ``events`` (its algorithm, without its I/O)."""
    flat = [flatten_event(event)[0] for event in events]
    counts: Counter[str] = Counter()
    for row in flat:
        counts.update(row.keys())
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[name for name, _ in counts.most_common()],
                                quoting=csv.QUOTE_MINIMAL)
        writer.writeheader()
        writer.writerows(flat)


def write_jsonl(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in events))
    return path


@pytest.mark.parametrize("seed", range(12))
def test_random_events_give_the_scripts_csv(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    # Few distinct shapes repeated many times (the fast path), and odd ones in between.
    templates = [random_event(rng, number) for number in range(8)]
    events = []
    for number in range(600):
        if rng.random() < 0.7:
            event = orjson.loads(orjson.dumps(rng.choice(templates)))  # same shape
            event["id"] = f"e{number}"
            for key in list(event)[2:]:  # same keys, other leaf values where leaves
                if not isinstance(event[key], (dict, list)):
                    event[key] = random_leaf(rng)
        else:
            event = random_event(rng, number)
        events.append(event)
    raw = write_jsonl(tmp_path / "raw.jsonl", events)
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    summary = write_csv([raw], ours)
    script_csv(events, theirs)
    assert ours.read_bytes() == theirs.read_bytes()
    assert summary.rows == len(events)
    assert summary.collisions == sum(len(flatten_event(event)[1]) for event in events)


def test_a_leaf_replaced_by_an_object_is_not_taken_for_the_same_shape(tmp_path: Path) -> None:
    # Same keys everywhere; only the type of "b" changes: a text, then objects and lists
    # whose text form would fit in one cell.
    events = [{"id": "1", "a": {"b": "x"}}, {"id": "2", "a": {"b": {"c": 1}}},
              {"id": "3", "a": {"b": "y"}}, {"id": "4", "a": {"b": []}},
              {"id": "5", "a": {"b": [1, {"d": None}]}}, {"id": "6", "a": {"b": {}}},
              # A collision: the value of "a_b" is overwritten, so it has no cell of its own.
              {"id": "7", "a_b": 1, "a": {"b": 2}}, {"id": "8", "a_b": {"x": 1}, "a": {"b": 2}},
              {"id": "9", "a_b": [3], "a": {"b": 2}}, {"id": "10", "a_b": None, "a": {"b": 2}}]
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    write_csv([write_jsonl(tmp_path / "raw.jsonl", events)], ours)
    script_csv(events, theirs)
    assert ours.read_bytes() == theirs.read_bytes()


def test_single_column_and_empty_cells(tmp_path: Path) -> None:
    events = [{"id": ""}, {"id": None}, {"id": "x"}, {"id": ","}]
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    write_csv([write_jsonl(tmp_path / "raw.jsonl", events)], ours)
    script_csv(events, theirs)
    assert ours.read_bytes() == theirs.read_bytes()


def test_past_the_shape_limit_events_are_still_written_exactly(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setattr(table, "MAX_SHAPES", 3)
    monkeypatch.setattr(table, "MAX_DISPATCH_KEYS", 2)
    rng = random.Random(99)
    events = [random_event(rng, number) for number in range(300)]
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    write_csv([write_jsonl(tmp_path / "raw.jsonl", events)], ours)
    script_csv(events, theirs)
    assert ours.read_bytes() == theirs.read_bytes()


def test_deep_and_wide_events(tmp_path: Path) -> None:
    deep: Any = "bottom"
    for level in range(200):  # orjson nests at most 254 deep
        deep = {f"k{level % 3}": deep}
    wide = {"id": "w", **{f"f{number}": number for number in range(3000)}}
    events = [{"id": "d", "deep": deep}, wide, {"id": "d2", "deep": deep}, wide]
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    write_csv([write_jsonl(tmp_path / "raw.jsonl", events)], ours)
    script_csv(events, theirs)
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("seed", range(3))
def test_quote_cells_quotes_each_cell_as_csv_writer_does(seed: int) -> None:
    """``quote_cells`` finds the cells to quote in one translated copy; each cell must come
    out as ``csv.writer`` writes it, whatever its neighbours hold."""
    rng = random.Random(seed)
    alphabet = ["a", "é", "日", ",", '"', "\r", "\n", " ", "x"]
    for _ in range(3000):
        cells = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(4)))
                 for _ in range(rng.randint(1, 6))]
        data = "\x1f".join(cells).encode()
        quoted = shapes.quote_cells(data)
        expected = []
        for cell in cells:
            buffer = io.StringIO(newline="")
            csv.writer(buffer, quoting=csv.QUOTE_MINIMAL).writerow([cell])
            # csv.writer writes a lone empty cell as "": in a row it is empty.
            expected.append("" if cell == "" else buffer.getvalue().removesuffix("\r\n"))
        assert quoted.decode().split("\x1f") == expected, cells
