"""The ELB node's health checker: its fixed cadence and thresholds (pure, a fake clock), and one real run on
this machine's loopback that asks it as HAProxy's agent check does."""

from __future__ import annotations

import json
import os
import socket
import threading

from lab.haproxy_stats import instance_health
from lab.runtime.elbcheck import Checker, Health, classify, next_due, read_status


def test_checks_start_on_the_clock_whatever_the_last_one_did():
    # every 10 s from t=3, whether the previous check took 0 s or timed out after 5 s
    assert next_due(3.0, 10.0, 0.0) == 3.0
    assert next_due(3.0, 10.0, 3.0) == 3.0
    assert next_due(3.0, 10.0, 3.001) == 13.0
    assert next_due(3.0, 10.0, 8.0) == 13.0  # a check that ended at 8 s (5 s timeout) does not delay the next
    assert next_due(3.0, 10.0, 13.0) == 13.0
    assert next_due(3.0, 10.0, 47.0) == 53.0  # a late loop skips missed slots and keeps the phase


def test_thresholds_as_the_elb_counts_them():
    h = Health(healthy_threshold=2, unhealthy_threshold=3)
    assert h.state == "InService" and h.status == "UP"
    assert not h.record("timeout", 5000) and h.status == "UP, 1/3 failed"
    assert not h.record("refused", 1)
    assert not h.record("ok", 1) and h.status == "UP"  # a pass resets the run of failures
    assert [h.record("timeout", 5000) for _ in range(3)] == [False, False, True]
    assert h.state == "OutOfService" and h.status == "DOWN"
    assert not h.record("ok", 1) and h.status == "DOWN, 1/2 passed"
    assert h.record("ok", 1) and h.state == "InService"
    assert h.agent_reply() == "up #UP; last check ok in 1 ms\n"


def test_connect_errors_are_named_as_the_elb_reports_them():
    import errno

    assert classify(0) == "ok" and classify(errno.ECONNREFUSED) == "refused" and classify(errno.ETIMEDOUT) == "timeout"
    assert classify(errno.EHOSTUNREACH) == "ehostunreach"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _config(tmp_path, targets, interval=10.0, timeout=5.0, agent_port=0):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "checks.json"
    path.write_text(
        json.dumps(
            {
                "elb": "elb-a1",
                "interval_s": interval,
                "timeout_s": timeout,
                "healthy_threshold": 2,
                "unhealthy_threshold": 2,
                "agent_port": agent_port,
                "targets": targets,
            }
        )
    )
    return path


def test_each_instance_is_checked_at_its_offset_every_interval(tmp_path, monkeypatch):
    clock = FakeClock()
    path = _config(
        tmp_path,
        [
            {"instance": "node-a1", "ip": "127.0.0.1", "port": 1, "offset_s": 0.0},
            {"instance": "node-a2", "ip": "127.0.0.1", "port": 1, "offset_s": 5.0},
        ],
    )
    checker = Checker(str(path), None, clock=clock)
    started: list[tuple[str, float]] = []
    monkeypatch.setattr(checker, "_start_check", lambda t, now: started.append((t.instance, now)))
    monkeypatch.setattr(checker.sel, "select", lambda timeout: [])
    for _ in range(60):  # 30 s in 0.5 s steps
        checker.step()
        clock.now += 0.5
    assert started == [
        ("node-a1", 100.0), ("node-a2", 105.0), ("node-a1", 110.0),
        ("node-a2", 115.0), ("node-a1", 120.0), ("node-a2", 125.0),
    ]  # fmt: skip
    checker.agent.close()


def test_a_real_checker_on_loopback_refused_ok_and_its_agent_answers(tmp_path, capsys):
    listener = socket.create_server(("127.0.0.1", 0))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connects to it are refused
    ok_port, refused_port = listener.getsockname()[1], closed.getsockname()[1]
    path = _config(
        tmp_path,
        [
            {"instance": "up", "ip": "127.0.0.1", "port": ok_port, "offset_s": 0.0},
            {"instance": "refusing", "ip": "127.0.0.1", "port": refused_port, "offset_s": 0.01},
        ],
        interval=0.1,
        timeout=0.05,
    )
    checker = Checker(str(path), str(tmp_path / "checks.sock"))
    agent_port = checker.agent.getsockname()[1]
    replies: dict[str, str] = {}

    def ask(name: str) -> None:
        with socket.create_connection(("127.0.0.1", agent_port), timeout=2) as s:
            s.sendall(f"{name}\n".encode())
            replies[name] = s.recv(256).decode()

    for _ in range(200):
        checker.step()
        if not checker.targets["refusing"].health.in_service:
            break
    status: dict = {}
    threads = [threading.Thread(target=ask, args=(n,)) for n in ("up", "refusing", "other")]
    threads.append(threading.Thread(target=lambda: status.update(read_status(str(tmp_path / "checks.sock")))))
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        checker.step()
    assert replies["up"].startswith("up #UP; last check ok in ")
    assert replies["refusing"].startswith("down #DOWN; last check refused in ")
    assert replies["other"] == "down #not an instance of this ELB node\n"
    assert status["refusing"]["state"] == "OutOfService" and status["refusing"]["port"] == refused_port
    assert status["up"]["last"] == "ok" and status["up"]["checks"] >= 1
    # what HAProxy shows for such replies reads back as the ELB's view
    rows = [
        {"pxname": "elb-health", "svname": "refusing", "status": "DOWN (agent)",
         "last_agt": f"via agent : down ({replies['refusing'][6:].strip()})"},
        {"pxname": "elb-health", "svname": "up", "status": "no check",
         "last_agt": f"via agent : up ({replies['up'][4:].strip()})"},
    ]  # fmt: skip
    health = instance_health(rows)
    assert health["refusing"]["state"] == "OutOfService" and health["refusing"]["status"] == "DOWN"
    assert health["refusing"]["check"].startswith("refused in ")
    assert health["up"]["state"] == "InService" and health["up"]["status"] == "UP"
    checks = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert {(c["instance"], c["result"]) for c in checks if "result" in c} == {("up", "ok"), ("refusing", "refused")}
    listener.close()
    closed.close()
    checker.agent.close()


def test_a_new_config_moves_the_port_and_keeps_state_and_cadence(tmp_path, monkeypatch):
    clock = FakeClock()
    target = {"instance": "node-a1", "ip": "127.0.0.1", "port": 30090, "offset_s": 2.0}
    path = _config(tmp_path, [target])
    checker = Checker(str(path), None, clock=clock)
    monkeypatch.setattr(checker, "_start_check", lambda t, now: None)
    monkeypatch.setattr(checker.sel, "select", lambda timeout: [])
    checker.targets["node-a1"].health.record("timeout", 5000)
    for port in (10256, 30090, 10256):  # replaced quickly, as a fault applied and reverted is
        tmp = _config(tmp_path / "new", [{**target, "port": port}])
        os.replace(tmp, path)  # as the backends write it
        clock.now += 0.25  # past the reload period
        checker.step()
        assert checker.targets["node-a1"].port == port
    t = checker.targets["node-a1"]
    assert t.first == 102.0 and t.health.status == "UP, 1/2 failed"
    checker.agent.close()
