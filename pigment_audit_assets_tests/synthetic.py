"""Deterministic synthetic audit events shaped like Pigment's.

The events follow what Pigment documents (standard fields, an actor, a context and a payload that
varies by event type) and are deliberately awkward where real data is awkward: text with commas,
double quotes, embedded newlines (``\\n`` and ``\\r\\n``) and non-ASCII characters; booleans, ints,
floats and nulls; a list of dicts of varying length; columns of very different densities; events
on the very first and last milliseconds of the day; and a fraction ingested hours late.

Only the standard library is used, so the stand-in and any test can import this module.
"""

from __future__ import annotations

import hashlib
import random
import time
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["EVENT_TYPES", "iter_synthetic_events", "synthetic_events"]

# Relative weights: frequent small events, rarer big ones (SnapshotTaken), so that column
# densities differ widely once the events are flattened.
EVENT_TYPES: dict[str, int] = {
    "UserPasswordChanged": 24,
    "UserAccountTypeUpdated": 18,
    "GroupAssignedToApplicationRole": 15,
    "GroupRemovedFromApplicationRole": 9,
    "UserInvited": 12,
    "UserDeactivated": 8,
    "UserReactivated": 5,
    "SnapshotTaken": 9,
}

_FIRST_NAMES = (
    "John", "Zoë", "Émile", "Jürgen", "Aiko", "Pat", "Ana", "Łukasz", "Siobhán", "María José",
    "Olu", "Renée", "太郎", "Chloé", "Søren",
)
_LAST_NAMES = (
    "Doe", "Müller", "O'Brien", "Dupont, Jr.", '"The Boss" Smith', "山田", "García", "Ødegaard",
    "Smith 🚀", "Nakamura", "Van der Berg", "Öztürk",
)
_APPLICATIONS = (
    "Budget, FY26", 'Sales "Pipeline" 2025', "Workforce\nPlanning", "Ops Review\r\nQ3",
    "Prévisions financières", "日本 売上計画", "Headcount 🚀 Plan", "Marketing — ROI",
    "Supply, Chain & Ops", "Tätigkeitsbericht", "P&L consolidated", "Test app",
)
_GROUPS = (
    "Finance", "Sales, EMEA", 'Admins "core"', "Équipe Paris", "チーム東京", "Readers 📖",
    "Contractors\nExternal", "Everyone",
)
_ROLES = ("Admin", "Contributor", "Viewer", "Budget owner, level 2", 'Read-only "auditor"')
_ACCOUNT_TYPES = ("Workspace Admin", "Security Admin", "Builder", "Contributor", "Viewer", "Member")
_DEACTIVATION_REASONS = (
    None, None, "Left the company", "Contract ended, access revoked", 'Requested by "HR"',
    "Duplicate account\nmerged into main one",
)
_INVITE_MESSAGES = (
    None, "Welcome!", "Welcome to Pigment,\nsee you at the kick-off 🎉",
    "Bienvenue dans l'équipe\r\nÀ bientôt", 'Please review the "Budget, FY26" app',
)
_SNAPSHOT_GROUPS = (
    "Month-end close", "Before re-forecast, v2", 'Board pack "final"', "Clôture mensuelle",
    "Nightly\nautomatic", "四半期",
)


@dataclass(frozen=True)
class _World:
    """The users, applications and groups that a seed's events refer to."""

    organization_id: str
    users: tuple[dict[str, str], ...]
    applications: tuple[tuple[str, str], ...]
    groups: tuple[tuple[str, str], ...]
    roles: tuple[tuple[str, str], ...]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _email(first: str, last: str, index: int) -> str:
    # Emails stay ASCII (as real ones mostly do) but some are upper-case, like Pigment's example.
    def slug(text: str) -> str:
        ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
        return "".join(c for c in ascii_text.lower() if c.isalnum()) or "user"

    address = f"{slug(first)}.{slug(last)}{index}@acme.example"
    return address.upper() if index % 5 == 0 else address


@lru_cache(maxsize=64)
def _world(seed: int) -> _World:
    rng = random.Random(f"pigment-synthetic-world|{seed}")
    users = []
    for index in range(60):
        first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
        users.append(
            {"userId": _uuid(rng), "userName": f"{first} {last}",
             "userEmail": _email(first, last, index)}
        )
    return _World(
        organization_id=_uuid(rng),
        users=tuple(users),
        applications=tuple((_uuid(rng), name) for name in _APPLICATIONS),
        groups=tuple((_uuid(rng), name) for name in _GROUPS),
        roles=tuple((_uuid(rng), name) for name in _ROLES),
    )


def _epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _iso_ms(epoch_ms: int) -> str:
    # time.strftime on gmtime is several times faster than datetime.isoformat here, and the
    # generator has to produce ~100,000 events a second.
    seconds, millis = divmod(epoch_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _day_bounds_ms(day: date, zone: ZoneInfo) -> tuple[int, int]:
    """Start (inclusive) and end (exclusive) of `day` in `zone`, as epoch milliseconds."""
    start = datetime.combine(day, dtime(), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), dtime(), tzinfo=zone)
    return _epoch_ms(start), _epoch_ms(end)  # 23 or 25 hours apart on DST days


def _payload(
    kind: str, rng: random.Random, world: _World, context: dict[str, Any]
) -> dict[str, Any]:
    user = rng.choice(world.users)
    if kind == "UserInvited":
        # Pigment's documented example for this type uses id/name/email, not userId/...
        return {"id": user["userId"], "name": user["userName"], "email": user["userEmail"],
                "accountType": rng.choice(_ACCOUNT_TYPES),
                "invitationMessage": rng.choice(_INVITE_MESSAGES)}
    if kind == "UserAccountTypeUpdated":
        new, previous = rng.sample(_ACCOUNT_TYPES, 2)
        return {**user, "newAccountType": new, "previousAccountType": previous}
    if kind == "UserDeactivated":
        return {**user, "reason": rng.choice(_DEACTIVATION_REASONS)}
    if kind == "UserReactivated":
        return {**user, "daysInactive": rng.randrange(1, 400)}
    if kind == "UserPasswordChanged":
        return {**user, "forcedByAdmin": rng.random() < 0.1,
                "passwordStrength": round(rng.random(), 3)}
    if kind in ("GroupAssignedToApplicationRole", "GroupRemovedFromApplicationRole"):
        app_id, app_name = rng.choice(world.applications)
        group_id, group_name = rng.choice(world.groups)
        role_id, role_name = rng.choice(world.roles)
        context["applicationId"], context["applicationName"] = app_id, app_name
        return {"groupId": group_id, "groupName": group_name, "roleId": role_id,
                "roleName": role_name, "memberCount": rng.randrange(0, 250)}
    # SnapshotTaken: a list of dicts whose length varies, so flattened columns such as
    # payload_applications_4_applicationName are sparse.
    apps = rng.sample(world.applications, rng.choice((1, 1, 1, 2, 2, 3, 5)))
    return {
        "snapshotGroup": {"id": _uuid(rng), "name": rng.choice(_SNAPSHOT_GROUPS),
                          "automatic": rng.random() < 0.5},
        "applications": [
            {"applicationId": app_id, "applicationName": app_name,
             "sizeMb": round(rng.uniform(0.1, 900.0), 2), "blockCount": rng.randrange(1, 500),
             "isArchived": rng.random() < 0.05,
             "lastModifiedBy": rng.choice(world.users)["userName"] if rng.random() < 0.7 else None}
            for app_id, app_name in apps
        ],
        "retentionDays": rng.choice((30, 90, 365, None)),
    }


def iter_synthetic_events(
    day: date,
    count: int,
    *,
    tz: str = "UTC",
    seed: int = 0,
    late_fraction: float = 0.0,
    max_lateness: timedelta = timedelta(days=2),
    id_prefix: str = "",
) -> Iterator[dict[str, Any]]:
    """Yield `count` events that happened on `day` in zone `tz`, one at a time.

    What :func:`synthetic_events` returns as a list; use this for big days, so the events need
    not all be held in memory at once. Events come in no particular time order.
    """
    if count < 0:
        raise ValueError("count must be >= 0")
    if not 0.0 <= late_fraction <= 1.0:
        raise ValueError("late_fraction must be between 0 and 1")
    start_ms, end_ms = _day_bounds_ms(day, ZoneInfo(tz))
    span_ms = end_ms - start_ms
    world = _world(seed)
    # One RNG per (seed, zone, day): days can be generated in any order and stay identical.
    rng = random.Random(f"pigment-synthetic|{seed}|{tz}|{day.isoformat()}")
    # Ids are "<hash of seed/zone/day>-<index>" in uuid layout, so no two days ever collide.
    stem = hashlib.blake2b(f"{seed}|{tz}|{day.isoformat()}".encode(), digest_size=8).hexdigest()
    id_head = f"{id_prefix}{stem[:8]}-{stem[8:12]}-4{stem[12:15]}-a{day.toordinal() % 4096:03x}-"
    max_late_ms = max(1, int(max_lateness.total_seconds() * 1000))
    min_late_ms = min(3_600_000, max_late_ms // 2)  # "hours" late, unless max_lateness is shorter
    # Weighted choice by indexing a table: several times faster than rng.choices per event.
    kind_table = [kind for kind, weight in EVENT_TYPES.items() for _ in range(weight)]
    # The first four events sit on the day's edges: first ms, last ms, first and last second.
    edges = (0, span_ms - 1, rng.randrange(min(1000, span_ms)),
             span_ms - 1 - rng.randrange(min(1000, span_ms)))

    for index in range(count):
        offset = edges[index] if index < len(edges) else rng.randrange(span_ms)
        event_ms = start_ms + offset
        if rng.random() < late_fraction:
            ingestion_ms = event_ms + rng.randint(min_late_ms, max_late_ms)
        else:
            ingestion_ms = event_ms + rng.randint(100, 30_000)
        kind = kind_table[int(rng.random() * len(kind_table))]
        context: dict[str, Any] = {"organizationId": world.organization_id}
        payload = _payload(kind, rng, world, context)
        if rng.random() < 0.03:
            # Some actions are done by an API key or by Pigment itself: no user, nulls instead.
            actor: dict[str, Any] = {"userId": None, "userName": "API key: nightly sync",
                                     "userEmail": None}
        else:
            actor = dict(rng.choice(world.users))
        yield {
            "id": f"{id_head}{index:012x}",
            "eventType": kind,
            "eventTimestamp": _iso_ms(event_ms),
            "ingestionTimestamp": _iso_ms(ingestion_ms),
            "actor": actor,
            "context": context,
            "payload": payload,
        }


def synthetic_events(day: date, count: int, **options: Any) -> list[dict[str, Any]]:
    """Return `count` deterministic events whose `eventTimestamp` falls on `day` in zone `tz`.

    Timestamps are ISO-8601 UTC strings with milliseconds and "Z". Each event is ingested
    0.1-30 s after it happened, except a `late_fraction` ingested from an hour (or half of
    `max_lateness`, if shorter) up to `max_lateness` later. Ids are unique across days and seeds
    and start with `id_prefix`. Keyword options (`tz`, `seed`, `late_fraction`, `max_lateness`,
    `id_prefix`) are those of :func:`iter_synthetic_events`.
    """
    return list(iter_synthetic_events(day, count, **options))
