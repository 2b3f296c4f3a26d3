"""Flatten nested events into the community script's column names.

Nested keys are joined with ``_`` and list items named by their index, so
``{"actor": {"userId": 1}, "payload": {"applications": [{"id": "a"}]}}`` becomes
``actor_userId`` and ``payload_applications_0_id``: users' Pigment import configurations
built on the script's CSVs keep working.

Empty objects and empty lists produce no column, as in the script.

Collisions: two paths can flatten to the same name (``{"a_b": 1, "a": {"b": 2}}``). The
script silently kept the value met last; we keep that rule for compatibility, but count each
overwritten value so the loss is reported, never silent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def iter_flat(event: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every leaf of ``event`` as ``(column name, value)``, depth first, in key order.

    A name appears once per leaf, so a collision shows as a repeated name; the last one wins.
    """
    # An explicit stack instead of recursion: faster, and no depth limit on odd payloads.
    stack: list[tuple[str, Any]] = [(name, value) for name, value in reversed(event.items())]
    while stack:
        name, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{name}_{key}", item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(
                (f"{name}_{index}", value[index]) for index in range(len(value) - 1, -1, -1)
            )
        else:
            yield name, value


def flatten_event(event: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Flatten one event; return the flat row and the column names whose value was overwritten.

    The list is empty for almost every event; a name appears once per value lost.
    """
    row: dict[str, Any] = {}
    collided: list[str] = []
    for name, value in iter_flat(event):
        if name in row:
            collided.append(name)
        row[name] = value
    return row, collided
