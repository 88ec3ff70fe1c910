"""A leased run's checkpoint: what it records, in one JSON field of its record (fenced, through its lease), so that
the replica that takes its work over goes on from there. Each kind says what its checkpoint holds and what makes one
usable: video jobs (gateway/jobs/run.py), live streams (gateway/live/resume.py)."""

from __future__ import annotations

import dataclasses
from typing import Self

import orjson


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A kind's checkpoint is a frozen dataclass of JSON values deriving from this one."""

    def dumps(self) -> str:
        return orjson.dumps(dataclasses.asdict(self)).decode()

    @classmethod
    def loads(cls, text: str) -> Self | None:
        """The checkpoint of a record's field; None for none, or one this version can't read (another layout,
        values of other types, or not `usable`)."""
        try:
            found = cls(**orjson.loads(text)) if text else None
            return found if found is not None and found.usable() else None
        except (orjson.JSONDecodeError, TypeError):
            return None

    def usable(self) -> bool:
        """Whether the values make sense (may raise TypeError for values of another type)."""
        return True
