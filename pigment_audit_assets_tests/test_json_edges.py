"""JSON edges: integers beyond 64 bits kept exact, events nested too deep for orjson set aside.

:mod:`pigment_audit_assets.core.jsonio` against orjson itself on random values, then end to end:
the stand-in serves the odd events, the core's scan writes the raw file and the rejects, and
both CSV paths (rendered during the scan, and ``write_csv`` from the raw file) are compared
with the community script's CSV of the same events.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from pigment_audit_assets.core import jsonio
from pigment_audit_assets.core.collect import fetch_days
from pigment_audit_assets.core.days import parse_zone
from pigment_audit_assets.core.storage import LocalStorage
from pigment_audit_assets.core.table import CsvTable, write_csv
from pigment_audit_assets_tests.conftest import DAY, STAND_IN_NOW, make_client
from pigment_audit_assets_tests.stand_in import PigmentStandIn
from pigment_audit_assets_tests.synthetic import synthetic_events
from pigment_audit_assets_tests.test_core import REFERENCE_MISSING, REFERENCE_SCRIPT, script_csv

log = logging.getLogger(__name__)
BIG = 123456789012345678901234567890

# --- jsonio against orjson -----------------------------------------------------------------

TEXTS = ["", "plain", "é 日本 🎉", 'q"uote', "back\\slash", "\n\r\t\x00\x1f\x7f", "\u2028",
         "1234567890123456789012", ":12345678901234567890,"]  # the last two: digits in text
NUMBERS = [0, -1, 7, 2**53 + 1, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, 10**18, 1.5e-7, 1e20,
           -0.0, 0.1, 1e300, 5e-324, 0.12345678901234567]
BIG_INTS = [BIG, -BIG, 2**64, -(2**63) - 1, 10**40]


def random_value(rng: random.Random, depth: int = 0, big: bool = False) -> Any:
    roll = rng.random()
    if depth < 5 and roll < 0.3:
        return {rng.choice(TEXTS) + str(n): random_value(rng, depth + 1, big)
                for n in range(rng.randint(0, 5))}
    if depth < 5 and roll < 0.5:
        return [random_value(rng, depth + 1, big) for _ in range(rng.randint(0, 5))]
    pool = [*TEXTS, *NUMBERS, True, False, None, *(BIG_INTS if big else [])]
    return rng.choice(pool)


def with_fragments(value: Any) -> Any:
    """``value`` with each integer beyond 64 bits as an orjson Fragment of its digits."""
    if isinstance(value, dict):
        return {key: with_fragments(item) for key, item in value.items()}
    if isinstance(value, list):
        return [with_fragments(item) for item in value]
    if type(value) is int and not -(2**63) <= value < 2**64:
        return orjson.Fragment(str(value).encode())
    return value


@pytest.mark.parametrize("seed", range(40))
def test_jsonio_writes_and_reads_as_orjson_except_big_integers(seed: int) -> None:
    rng = random.Random(seed)
    plain = {"v": random_value(rng)}
    data = orjson.dumps(plain)
    assert jsonio.dumps(plain) == data
    assert jsonio._dumps_walk(plain, None) == data  # the fallback writer: orjson's bytes
    assert repr(jsonio.loads(data)) == repr(orjson.loads(data))  # types too (-0.0, ints)
    big = {"v": random_value(rng, big=True), "n": BIG}
    written = jsonio.dumps(big)
    assert written == orjson.dumps(with_fragments(big))
    assert repr(jsonio.loads(written)) == repr(big)  # every integer exact, every float too
    assert repr(orjson.loads(written)) != repr(big)  # what orjson alone would have read


def test_json_dumps_would_not_give_orjsons_bytes() -> None:
    """Why big integers are not written with json.dumps: floats come out differently."""
    assert json.dumps(1.5e-7, separators=(",", ":")) == "1.5e-07"
    assert jsonio.dumps([1.5e-7, BIG]) == b"[1.5e-7,123456789012345678901234567890]"


def test_loads_leaves_validity_to_orjson() -> None:
    for data in (b"[123456789012345678901234567890, NaN]",
                 b"[1e400, 12345678901234567890123]", b"{\"a\": 12345678901234567890123,}"):
        json_alone = None
        with contextlib.suppress(ValueError):
            json_alone = json.loads(data)
        with pytest.raises(jsonio.JSONDecodeError):
            jsonio.loads(data)
        assert json_alone is not None or data.endswith(b",}")  # json would have taken them
    assert jsonio.loads(b"-9223372036854775809") == -9223372036854775809  # 19 digits, signed
    assert type(jsonio.loads(b"[9223372036854775808]")[0]) is int


def test_a_lone_surrogate_is_read_and_refused_for_a_raw_file_but_kept_for_a_reject() -> None:
    # Valid JSON that UTF-8 cannot hold: orjson refuses the whole document, json reads it.
    data = b'{"name": "Ann \\ud83d", "n": 123456789012345678901234567890}'
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(data)
    value = jsonio.loads(data)
    assert value == json.loads(data) and value["name"] == "Ann \ud83d"
    with pytest.raises(jsonio.NotUnicode, match="lone UTF-16 surrogate"):
        jsonio.dumps(value)
    written = jsonio.dumps(value, any_depth=True)
    assert written == b'{"name":"Ann \\ud83d","n":123456789012345678901234567890}'
    assert jsonio.loads(written) == value
    with pytest.raises(jsonio.NotUnicode):  # deep and odd at once: still refused, not escaped
        jsonio.dumps([value, 123456789012345678901234567890])
    with pytest.raises(jsonio.JSONDecodeError):  # not JSON at all stays refused
        jsonio.loads(b'["\\ud83d", NaN')


def test_nesting_limit_is_orjsons_and_any_depth_writes_without_recursion() -> None:
    for depth in range(250, 260):
        value: Any = BIG if depth % 2 else "leaf"  # with and without the big-integer path
        for _ in range(depth):
            value = [value]
        try:
            expected = orjson.dumps(with_fragments(value))
        except orjson.JSONEncodeError:
            expected = None
        assert (expected is None) == (depth > jsonio.MAX_DEPTH)
        if expected is None:
            with pytest.raises(jsonio.NestingTooDeep, match="nested deeper than 254 levels"):
                jsonio.dumps(value)
            leaf = b"123456789012345678901234567890" if depth % 2 else b'"leaf"'
            assert jsonio.dumps(value, any_depth=True) == b"[" * depth + leaf + b"]" * depth
        else:
            assert jsonio.dumps(value) == expected
    deep: Any = {}
    for _ in range(5000):  # far past Python's recursion limit
        deep = {"a": deep}
    assert jsonio.dumps(deep, any_depth=True) == b'{"a":' * 5000 + b"{}" + b"}" * 5000


def test_loads_deeper_than_orjson_parses_without_recursion() -> None:
    data = b"[" * 1100 + b"]" * 1100  # orjson parses 1,024 levels, json about 1,000
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(data)
    with pytest.raises(RecursionError):
        json.loads(data)
    value = jsonio.loads(data)
    for _ in range(1099):
        value = value[0]
    assert value == []


@pytest.mark.parametrize("seed", range(20))
def test_the_deep_parser_reads_what_json_reads(seed: int) -> None:
    rng = random.Random(seed)
    value = {"v": random_value(rng, big=True), "s": TEXTS}
    text = json.dumps(value, indent=rng.choice([None, 1]), ensure_ascii=rng.random() < 0.5)
    assert repr(jsonio._loads_deep(text.encode())) == repr(json.loads(text))
    read = jsonio.loads(jsonio.dumps(nested(1500, value), any_depth=True))
    assert repr(unwrap(1500, read)) == repr(value)  # repr itself would recurse too deep


@pytest.mark.parametrize("tail", [b"[1,]", b"[1 2]", b'{"a" 1}', b'{"a":1,}', b"[NaN]",
                                  b"[1e400]", b'["open]', b"[tru]", b"[01]", b"[1]x", b"[-]",
                                  b'["\xff"]', b"{1:2}"])
def test_the_deep_parser_refuses_what_is_not_json(tail: bytes) -> None:
    with pytest.raises(jsonio.JSONDecodeError):
        jsonio.loads(b"[" * 1100 + tail + b"]" * 1100)
    with pytest.raises(jsonio.JSONDecodeError):
        jsonio._loads_deep(tail)


# --- end to end ----------------------------------------------------------------------------

def odd_event(base: dict[str, Any], event_id: str, payload: Any) -> dict[str, Any]:
    """An event of the day (the times of ``base``) with its own id and payload."""
    return {**base, "id": event_id, "payload": payload}


def nested(depth: int, leaf: Any) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def unwrap(depth: int, value: Any) -> Any:
    """What :func:`nested` wrapped, checking each level's shape on the way down."""
    for level in reversed(range(depth)):
        if level % 2:
            (value,) = value
        else:
            assert list(value) == ["k"]
            value = value["k"]
    return value


@pytest.mark.skipif(not REFERENCE_SCRIPT.exists(), reason=REFERENCE_MISSING)
def test_integers_beyond_64_bits_reach_the_raw_file_and_the_csv_exactly(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    events = synthetic_events(DAY, 30, seed=11)
    big = odd_event(events[3], "big-1", {"count": BIG, "negative": -98765432109876543210,
                                         "u64": 2**64 - 1, "small": 5, "ratio": 1.5e-7,
                                         "list": [BIG, 1, "x"]})
    stand_in.add_events([*events, big])
    storage = LocalStorage(tmp_path / "store")
    with CsvTable(tmp_path / "scratch") as table:
        scan = fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage,
                          now=STAND_IN_NOW, log=log, table=table)
        rendered = table.write(tmp_path / "rendered.csv")
    assert scan.days[DAY].events == 31 and scan.rejected == 0
    raw = storage.raw_path(DAY)
    (line,) = [line for line in raw.read_bytes().splitlines() if b'"big-1"' in line]
    assert b'"count":123456789012345678901234567890,' in line
    assert b'"negative":-98765432109876543210,' in line
    assert b'"list":[123456789012345678901234567890,1,"x"]' in line
    assert repr(json.loads(line)) == repr(big)  # the API's values, every one exact
    from_raw = write_csv([raw], tmp_path / "from_raw.csv")
    ours = Path(from_raw.path).read_bytes()
    assert Path(rendered.path).read_bytes() == ours  # the command line's CSV and the assets'
    assert b",123456789012345678901234567890," in ours
    assert b"-98765432109876543210" in ours and b"e+29" not in ours
    assert ours == script_csv(raw, tmp_path / "theirs.csv")


def test_an_event_nested_too_deep_is_rejected_and_the_day_lands(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    events = synthetic_events(DAY, 30, seed=12)
    deep = [odd_event(events[5], "deep-300", nested(300, "bottom")),
            odd_event(events[9], "deep-600", nested(600, BIG)),
            odd_event(events[12], "deep-1500", nested(1500, 1.5e-7))]  # past orjson's parser
    limit = sys.getrecursionlimit()
    try:
        sys.setrecursionlimit(5000)  # for the stand-in's json encoder, in this thread only
        stand_in.add_events([*events, *deep])
    finally:
        sys.setrecursionlimit(limit)
    storage = LocalStorage(tmp_path / "store")
    for scan_number in (1, 2):  # the second scan reads the first one's rejects back
        with CsvTable(tmp_path / "scratch") as table:
            scan = fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage,
                              now=STAND_IN_NOW, log=log, table=table)
            summary = table.write(tmp_path / f"day-{scan_number}.csv")
        day = scan.days[DAY]
        assert day.events == summary.rows == 30 and day.rejected == 3
        ids = [orjson.loads(line)["id"] for line in storage.raw_path(DAY).read_bytes().splitlines()]
        assert sorted(ids) == sorted(event["id"] for event in events)
        records = [jsonio.loads(line) for line in
                   storage.rejected_path(DAY).read_bytes().splitlines()]
        assert sorted((record["event"]["id"], record["reason"]) for record in records) == [
            ("deep-1500", "nested deeper than 254 levels"),
            ("deep-300", "nested deeper than 254 levels"),
            ("deep-600", "nested deeper than 254 levels")]
        by_id = {record["event"]["id"]: record["event"] for record in records}
        for event in deep:  # kept whole, exact (compared as bytes: == would recurse)
            assert (jsonio.dumps(by_id[event["id"]], any_depth=True)
                    == jsonio.dumps(event, any_depth=True))
        assert unwrap(600, by_id["deep-600"]["payload"]) == BIG
        assert unwrap(1500, by_id["deep-1500"]["payload"]) == 1.5e-7


def test_an_event_with_a_lone_surrogate_is_rejected_and_the_day_lands(
        stand_in: PigmentStandIn, tmp_path: Path) -> None:
    """Half an emoji in a name (\\ud83d, a truncated text): orjson refuses the page it is in;
    the page is read all the same, that event rejected with the reason, the rest kept."""
    events = synthetic_events(DAY, 30, seed=14)
    odd = [odd_event(events[3], "half-emoji", {"name": "Ann \ud83d"}),
           odd_event(events[7], "half-emoji-key", {"\udc00": 1})]
    stand_in.add_events([*events, *odd])
    storage = LocalStorage(tmp_path / "store")
    for scan_number in (1, 2):  # the second scan reads the first one's rejects back
        with CsvTable(tmp_path / "scratch") as table:
            scan = fetch_days(make_client(stand_in), [DAY], parse_zone("UTC"), storage,
                              now=STAND_IN_NOW, log=log, table=table)
            summary = table.write(tmp_path / f"day-{scan_number}.csv")
        assert scan.days[DAY].events == summary.rows == 30 and scan.days[DAY].rejected == 2
        ids = [orjson.loads(line)["id"] for line in storage.raw_path(DAY).read_bytes().splitlines()]
        assert sorted(ids) == sorted(event["id"] for event in events)
        records = [jsonio.loads(line) for line in
                   storage.rejected_path(DAY).read_bytes().splitlines()]
        assert sorted((record["event"]["id"], record["reason"]) for record in records) == [
            ("half-emoji", jsonio.NOT_UNICODE), ("half-emoji-key", jsonio.NOT_UNICODE)]
        assert {record["event"]["id"]: record["event"] for record in records} == {
            event["id"]: event for event in odd}  # kept exactly, escape and all
