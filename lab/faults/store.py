"""A lab's fault records: /run/lab/<lab>/faults.json, rewritten atomically, under one lock per lab."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lab.faults.model import FaultRecord
from lab.state import LabState


class FaultStore:
    def __init__(self, state: LabState):
        self.state = state

    @property
    def path(self) -> Path:
        return self.state.path("faults.json")

    @property
    def lock_path(self) -> Path:
        return self.state.path("faults.lock")

    @contextlib.contextmanager
    def locked(self) -> Iterator[FaultStore]:
        """One fault command at a time per lab (apply, revert, the duration reverter, teardown)."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)

    def load(self) -> list[FaultRecord]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        return [FaultRecord.from_json(r) for r in data.get("faults", [])]

    def save(self, records: list[FaultRecord]) -> None:
        """Write and fsync before the caller touches anything: the record is the journal of the fault."""
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"lab": self.state.name, "faults": [r.to_json() for r in records]}, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def put(self, record: FaultRecord) -> None:
        records = [r for r in self.load() if r.id != record.id]
        records.append(record)
        records.sort(key=lambda r: r.id)
        self.save(records)

    def next_id(self) -> int:
        return max((r.id for r in self.load()), default=0) + 1
