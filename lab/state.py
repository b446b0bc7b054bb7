"""A lab's state directory: what it is, what it created (journaled before creating it), where its files live."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import InputError
from lab.models.common import LAB_NAME_LONGEST, check_name

STATE_ROOT = Path(os.environ.get("LAB_STATE_ROOT", "/run/lab"))
NETNS_PREFIX = "lab."  # every namespace is lab.<lab>.<host>: the dot never occurs in lab or host names


def check_lab_name(name: str) -> str:
    """The lab name rule, the same as a topology's `name` (lab.models.common.LabName)."""
    try:
        return check_name(name, LAB_NAME_LONGEST)
    except ValueError as exc:
        raise InputError(f"lab name {name!r} is invalid: {str(exc).split('; got')[0]}") from None


def _is_lab_name(name: str) -> bool:
    try:
        check_name(name, LAB_NAME_LONGEST)
    except ValueError:
        return False
    return True


def netns_name(lab: str, host: str) -> str:
    return f"{NETNS_PREFIX}{lab}.{host}"


def split_netns_name(netns: str) -> tuple[str, str] | None:
    """(lab, host) for a namespace name the lab uses, else None."""
    if not netns.startswith(NETNS_PREFIX):
        return None
    rest = netns[len(NETNS_PREFIX) :]
    if rest.count(".") != 1:
        return None
    lab, host = rest.split(".")
    return lab, host


@dataclass(frozen=True)
class LabState:
    """Files of one lab under /run/lab/<name>/ (tmpfs: gone on reboot, like the namespaces)."""

    name: str

    @property
    def dir(self) -> Path:
        return STATE_ROOT / self.name

    @property
    def info_file(self) -> Path:
        return self.dir / "lab.json"

    @property
    def journal_file(self) -> Path:
        return self.dir / "journal.jsonl"

    @property
    def control_socket(self) -> Path:
        return self.dir / "supervisor.sock"

    @property
    def processes_file(self) -> Path:
        return self.dir / "processes.json"

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def exists(self) -> bool:
        return self.dir.is_dir()

    # --- lab.json: what the lab is (topology, backend, status) ---

    def read_info(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.info_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            return {"name": self.name, "status": "corrupt"}

    def write_info(self, info: dict[str, Any]) -> None:
        tmp = self.info_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
        os.replace(tmp, self.info_file)

    def update_info(self, **changes: Any) -> dict[str, Any]:
        info = self.read_info() or {"name": self.name}
        info.update(changes)
        self.write_info(info)
        return info

    # --- journal: every resource, recorded before it is created ---

    def create_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=False, mode=0o700)
        for sub in ("logs", "run"):
            self.path(sub).mkdir(mode=0o700)

    def record(self, kind: str, **fields: Any) -> None:
        """Append one intent to the journal and flush it to disk before the caller creates the thing."""
        entry = {"t": round(time.time(), 3), "kind": kind, **fields}
        with open(self.journal_file, "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def journal(self) -> list[dict[str, Any]]:
        try:
            lines = self.journal_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line after a crash: everything before it still counts
        return out

    def recorded(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.journal() if e.get("kind") == kind]


def all_labs() -> list[LabState]:
    if not STATE_ROOT.is_dir():
        return []
    return [LabState(p.name) for p in sorted(STATE_ROOT.iterdir()) if p.is_dir() and _is_lab_name(p.name)]
