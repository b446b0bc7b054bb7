"""Apply, revert, list and expire a lab's faults; every change is journaled in faults.json before it is made.

Apply: validate (kind, target, parameters: nothing is recorded for bad input), plan the steps, write the
record (state Applying), then for each step capture the prior state, save, make the change, save. Any
failure or interrupt undoes every step (each revert is idempotent) before the error is shown. Revert undoes
the steps in reverse order. `--duration` starts a small detached reverter process; as a backstop every
fault command first reverts faults whose time is up (so an expired fault never outlives the next command).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from lab.errors import InputError, LabError, LabStateError
from lab.faults.kinds import KINDS, get_kind
from lab.faults.model import APPLYING, INJECTED, NOT_INJECTED, FaultRecord, Step, param_docs, parse_params, show_params
from lab.faults.ops import OPS, find_helpers, run_quietly, stop_pids
from lab.faults.store import FaultStore
from lab.hosts import process_cmdline
from lab.lab import Lab
from lab.state import LabState

MAX_DURATION = 7 * 86400.0
REVERTER_MODULE = "lab.faults.reverter"


def list_kinds() -> list[dict[str, Any]]:
    """Every kind with its target and parameters (name, default, meaning) - what `lab fault list` shows."""
    out = []
    for kind in KINDS.values():
        params = []
        for doc in param_docs(kind.params):
            field = kind.params.model_fields[doc["name"]]
            default = field.get_default(call_default_factory=True)
            params.append({**doc, "default": default, "default_text": doc["default"]})
        out.append(
            {
                "kind": kind.name,
                "summary": kind.summary,
                "target": kind.target,
                "params": params,
                "example": kind.example,
            }
        )
    return out


def _resource(step: Step) -> str | None:
    """What a step changes exclusively: two faults must not fight over it."""
    if step.op == "tc":
        return f"tc qdisc of {step.host}/{step.args['ifname']}"
    if step.op == "pod":
        return f"pod {step.args['pod']}"
    if step.op == "kube-proxy":
        return "kube-proxy's rules"
    if step.op in ("elb-config", "elb-check-port"):
        return f"ELB node {step.args['elb']}"
    if step.op == "conntrack-fill":
        return f"conntrack table of {step.host}"
    if step.op == "iptables" and "nat" in step.args["tables"]:
        return f"masquerade of {step.host}"  # two ranges: the chain inserted last would win
    return None


def view(rec: FaultRecord, lab: Lab | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": rec.id,
        "kind": rec.kind,
        "target": rec.target,
        "params": rec.params,
        "params_text": _text(rec.kind, rec.params),
        "state": rec.state,
        "applied_at": rec.applied_at,
        "expires_at": rec.expires_at,
        "reverted_at": rec.reverted_at,
        "reverted_by": rec.reverted_by,
        "engine": rec.engine,
        "notes": rec.notes,
        "changes": [OPS[s.op].describe(s) for s in rec.steps],
        "results": {i: s.result for i, s in enumerate(rec.steps) if s.result},
    }
    if lab is not None and rec.state == INJECTED:
        missing = []
        for s in rec.steps:
            if s.op == "helper":
                with contextlib.suppress(LabError):
                    if not find_helpers(lab.host(s.host), s.args["marker"]):
                        missing.append(s.host)
        if missing:
            data["problem"] = f"helper process gone on {', '.join(missing)} (revert and apply again)"
    return data


def check(kind_name: str, params: list[str] | dict[str, Any] | None) -> None:
    """Validate a kind and its parameters without a lab (the CLI does this before anything else)."""
    kind = get_kind(kind_name)
    parse_params(kind.name, kind.params, params or [])


def _text(kind_name: str, params: dict[str, Any]) -> str:
    """Only what differs from the kind's defaults, for people."""
    fields = get_kind(kind_name).params.model_fields
    shown = {
        k: v for k, v in params.items() if k not in fields or fields[k].get_default(call_default_factory=True) != v
    }
    return show_params(shown) or "defaults"


def apply(
    lab: Lab,
    kind_name: str,
    target: str | None = None,
    params: list[str] | dict[str, Any] | None = None,
    duration: float | None = None,
    dry_run: bool = False,
    progress: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """Apply a fault; `progress` hears each step as it starts (a conntrack fill takes seconds)."""
    kind = get_kind(kind_name)
    p = parse_params(kind.name, kind.params, params or [])
    if duration is not None and not 0 < duration <= MAX_DURATION:
        raise InputError(f"--duration {duration:g}s: must be above 0 and at most 7 days")
    store = FaultStore(lab.state)
    with store.locked():
        _expire_due(lab, store)
        tgt = kind.resolve(lab, target, p)
        wanted = p.model_dump(mode="json")
        records = store.load()
        for r in records:
            if r.active and r.kind == kind.name and r.target == tgt:
                if r.params == wanted:
                    return {"fault": view(r), "already": True}
                raise LabStateError(
                    f"fault {r.id} ({r.kind} on {tgt}) is already applied with {_text(r.kind, r.params)}; "
                    f"revert it first: lab fault revert {r.id}"
                )
        fid = store.next_id()
        plan = kind.plan(lab, fid, tgt, p)
        busy = {_resource(s): r.id for r in records if r.active for s in r.steps if _resource(s)}
        for s in plan.steps:
            res = _resource(s)
            if res in busy:
                raise LabStateError(f"{res} is already changed by fault {busy[res]}; revert it first")
        if dry_run:
            return {
                "dry_run": True,
                "kind": kind.name,
                "target": tgt,
                "params": wanted,
                "params_text": _text(kind.name, wanted),
                "engine": plan.engine,
                "notes": plan.notes or [],
                "changes": [OPS[s.op].describe(s) for s in plan.steps],
            }
        now = time.time()
        rec = FaultRecord(
            id=fid,
            kind=kind.name,
            target=tgt,
            params=wanted,
            state=APPLYING,
            applied_at=now,
            steps=plan.steps,
            duration=duration,
            expires_at=now + duration if duration else None,
            engine=plan.engine,
            notes=plan.notes or [],
        )
        store.put(rec)  # the journal entry exists before anything changes
        try:
            for step in rec.steps:
                op = OPS[step.op]
                progress(op.describe(step))
                step.prior = op.capture(lab, step)
                store.put(rec)
                step.result = op.apply(lab, step) or {}
                step.done = True
                store.put(rec)
        except BaseException as exc:
            errors = _undo(lab, rec)
            rec.state = NOT_INJECTED if not errors else APPLYING
            rec.reverted_at = time.time()
            rec.reverted_by = f"apply failed: {exc}"[:300]
            store.put(rec)
            raise
        rec.state = INJECTED
        if duration:
            rec.reverter_pid = _spawn_reverter(lab, rec)
        store.put(rec)
        return {"fault": view(rec), "already": False}


def apply_to(
    lab_name: str,
    kind_name: str,
    target: str | None = None,
    params: list[str] | None = None,
    duration: float | None = None,
    dry_run: bool = False,
    progress: Callable[[str], None] = lambda _msg: None,
) -> dict[str, Any]:
    """apply() on the lab named `lab_name` (`lab fault apply`): a bad kind or parameter is reported before the
    lab is looked up, so the message is about the fault even when no lab is up."""
    check(kind_name, params)
    return apply(Lab.load(lab_name), kind_name, target, params, duration, dry_run, progress)


def _undo(lab: Lab, rec: FaultRecord) -> list[str]:
    """Revert every step that may have changed something, last first; errors are collected, not raised."""
    errors = []
    for step in reversed(rec.steps):
        if step.prior is None:
            continue  # its capture never ran, so neither did its change
        op = OPS[step.op]
        err = run_quietly(lambda op=op, step=step: op.revert(lab, step))
        if err:
            errors.append(err)
        else:
            step.done = False
    return errors


def revert(lab: Lab, ids: list[int] | None = None, reason: str = "lab fault revert") -> list[dict[str, Any]]:
    """Revert the given faults (None: every active one). Reverting a fault that is not injected is a no-op."""
    store = FaultStore(lab.state)
    with store.locked():
        if reason != "duration":
            _expire_due(lab, store)
        return _revert(lab, store, ids, reason)


def _revert(lab: Lab, store: FaultStore, ids: list[int] | None, reason: str) -> list[dict[str, Any]]:
    records = {r.id: r for r in store.load()}
    if ids is not None:
        unknown = [i for i in ids if i not in records]
        if unknown:
            known = ", ".join(str(i) for i in records) or "none"
            raise InputError(f"no fault {unknown[0]} in lab '{lab.name}' (faults: {known}); see `lab fault status`")
        chosen = [records[i] for i in ids]
    else:
        chosen = [r for r in records.values() if r.active]
    out, failed = [], []
    for rec in sorted(chosen, key=lambda r: -r.id):
        if not rec.active:
            out.append({**view(rec), "already": True})
            continue
        errors = _undo(lab, rec)
        _stop_reverter(lab, rec)
        if errors:
            rec.notes.append(f"revert incomplete: {errors[0]}")
            failed.append(f"fault {rec.id}: {errors[0]}")
        else:
            rec.state = NOT_INJECTED
            rec.reverted_at = time.time()
            rec.reverted_by = reason
        store.put(rec)
        out.append({**view(rec), "already": False})
    if failed:
        raise LabError(f"revert incomplete ({'; '.join(failed)}); run `lab fault revert` again or `lab clean`")
    return out


def status(lab: Lab, active_only: bool = False) -> list[dict[str, Any]]:
    store = FaultStore(lab.state)
    with store.locked():
        _expire_due(lab, store)
        records = store.load()
    return [view(r, lab) for r in records if r.active or not active_only]


def conntrack_reserved(lab: Lab) -> dict[str, int]:
    """Per node, the filler entries of active conntrack-exhaustion faults in mode=ceiling: slots the emulated
    (smaller) table does not have. Metrics take them out of count and max, so a node's fill is its traffic's
    share of the table it emulates. Reads the store without its lock: a sampler must not wait on an apply."""
    reserved: dict[str, int] = {}
    for rec in FaultStore(lab.state).load():
        if not rec.active:
            continue
        for step in rec.steps:
            if step.op == "conntrack-fill" and step.done and step.args.get("ceiling") is not None:
                reserved[step.host] = reserved.get(step.host, 0) + int(step.result.get("inserted", 0))
    return reserved


def _expire_due(lab: Lab, store: FaultStore) -> None:
    """Housekeeping under the lock: undo applies that were interrupted, revert faults whose time is up."""
    records = store.load()
    # Apply holds the lock until it ends, so a record still Applying here belongs to a process that died.
    for rec in records:
        if rec.state == APPLYING:
            _revert(lab, store, [rec.id], "recovered: its apply was interrupted")
    now = time.time()
    due = [r.id for r in records if r.state == INJECTED and r.expires_at and r.expires_at <= now]
    if due:
        _revert(lab, store, due, "duration")


# --- the --duration reverter ---------------------------------------------------------------------------------------


def _spawn_reverter(lab: Lab, rec: FaultRecord) -> int:
    log = open(lab.state.path("logs", f"fault-{rec.id}-reverter.log"), "ab")  # noqa: SIM115  the child keeps it
    with log:
        proc = subprocess.Popen(
            [sys.executable, "-m", REVERTER_MODULE, "--lab", lab.name, "--fault", str(rec.id)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def _is_reverter(pid: int, lab_name: str, fid: int) -> bool:
    cmd = process_cmdline(pid)
    return REVERTER_MODULE in cmd and lab_name in cmd and str(fid) in cmd


def _stop_reverter(lab_or_name: Any, rec: FaultRecord) -> None:
    name = lab_or_name if isinstance(lab_or_name, str) else lab_or_name.name
    pid = rec.reverter_pid
    if pid and pid != os.getpid() and _is_reverter(pid, name, rec.id):
        stop_pids([pid], grace=1.0)


def teardown(state: LabState) -> None:
    """Before a lab is destroyed: stop the faults' reverters (the only fault processes outside the lab).

    Everything else a fault changed (rules, qdiscs, conntrack entries, helper processes) lives in the lab's
    namespaces and goes with them; the records say the faults ended with the lab.
    """
    store = FaultStore(state)
    if not store.path.exists():
        return
    with store.locked():
        records = store.load()
        for rec in records:
            _stop_reverter(state.name, rec)
            if rec.active:
                rec.state = NOT_INJECTED
                rec.reverted_at = time.time()
                rec.reverted_by = "lab removed"
        store.save(records)
