"""lab.load without root: the schedule, outcome classes, the wire bytes, statistics, the spec's checks, and the
worker engine against a real LabService server on this machine's loopback (no lab needed)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from hdrh.histogram import HdrHistogram
from labservices.server import PodIdentity, listen_tcp, serve
from typer.testing import CliRunner

from lab.cli.app import app
from lab.cli.commands import load as _load  # noqa: F401  registers the command
from lab.errors import InputError
from lab.load import outcomes, wire
from lab.load.generator import LoadSpec
from lab.load.schedule import Ramp
from lab.load.stats import PERCENTILES, ClientSlice, Tally, encode, new_histogram, record, summary
from lab.load.worker import Engine, WorkerSpec
from tests.conftest import REPO


def test_constant_rate_schedule():
    r = Ramp(rate=200, duration=5)
    assert r.total == 1000
    assert r.due(0) == 0 and r.due(200) == pytest.approx(1.0) and r.due(999) == pytest.approx(4.995)


def test_linear_ramp_schedule():
    r = Ramp(rate=100, duration=4, rate_end=300)
    assert r.total == 800
    dues = [r.due(k) for k in range(r.total)]
    assert dues == sorted(dues) and dues[-1] < 4
    per_second = [sum(1 for t in dues if s <= t < s + 1) for s in range(4)]
    assert per_second == [125, 175, 225, 275]
    down = Ramp(rate=300, duration=4, rate_end=0)
    assert down.total == 600 and down.due(599) < 4
    with pytest.raises(ValueError):
        Ramp(rate=0, duration=1)


@pytest.mark.parametrize(
    ("exc", "connecting", "want"),
    [
        (TimeoutError(), True, "connect-timeout"),
        (TimeoutError(), False, "read-timeout"),
        (ConnectionRefusedError(111, "refused"), True, "connect-refused"),
        (ConnectionResetError(104, "reset"), False, "reset"),
        (outcomes.PeerClosed("eof"), False, "reset"),
        (BrokenPipeError(32, "pipe"), False, "reset"),
        (OSError(99, "Cannot assign requested address"), True, "other"),
        (outcomes.BadReply(b"x"), False, "other"),
    ],
)
def test_outcome_classes(exc, connecting, want):
    assert outcomes.classify(exc, connecting)[0] == want


def test_no_free_port_keeps_its_errno():
    assert outcomes.classify(OSError(99, "x"), True) == ("other", "EADDRNOTAVAIL")


def test_wire_bytes():
    ping = wire.build_call("ping")
    assert ping.request == b"\x80\x01\x00\x01\x00\x00\x00\x04ping\x00\x00\x00\x00\x00"
    assert ping.reply == b"\x80\x01\x00\x02\x00\x00\x00\x04ping\x00\x00\x00\x00\x00"
    echo = wire.build_call("echo", payload=1000)
    assert len(echo.request) > 1000 and len(echo.reply) > 1000
    assert wire.build_call("work", work_ms=7).reply.endswith(b"\x08\x00\x00\x00\x00\x00\x07\x00")
    with pytest.raises(ValueError):
        wire.build_call("whoami")


def test_slices_merge_histograms_exactly():
    a, b = ClientSlice(0, 1), ClientSlice(1, 2)
    ha, hb = new_histogram(), new_histogram()
    for ms in range(1, 101):
        record(ha, ms / 1000)
    record(hb, 2.0)
    a.histograms["latency"], b.histograms["latency"] = encode(ha), encode(hb)
    a.outcomes["ok"], b.outcomes["ok"], b.outcomes["reset"] = 100, 1, 3
    m = ClientSlice.merged([a, b], 0, 2)
    d = m.to_dict()
    assert d["requests"] == 104 and d["outcomes"]["reset"] == 3
    assert d["latency"]["count"] == 101 and d["latency"]["max_ms"] == pytest.approx(2000, rel=0.001)
    assert d["latency"]["p50_ms"] == pytest.approx(51, rel=0.01)
    assert summary(new_histogram()) == {"count": 0}


def hdrh_summary(h: HdrHistogram) -> dict:
    """The summary as it was computed before (hdrh walking every bucket in Python): the reference."""
    n = h.get_total_count()
    if n == 0:
        return {"count": 0}
    out = {"count": n, "min_ms": h.get_min_value() / 1000, "mean_ms": round(h.get_mean_value() / 1000, 3)}
    for p in PERCENTILES:
        out[f"p{p:g}_ms"] = h.get_value_at_percentile(p) / 1000
    out["max_ms"] = h.get_max_value() / 1000
    return out


def recorded_run() -> tuple[list[ClientSlice], dict]:
    """A real 12 s run (per-request, 300/s through the ELB): its slices with their encoded histograms, and
    what the code before incremental summaries printed for them (per_second, histograms_ms, hdr)."""
    data = json.loads((REPO / "tests" / "fixtures" / "load" / "run-12s-per-request.json").read_text())
    return [ClientSlice.from_dict(d) for d in data["slices"]], data["expected"]


def test_recorded_run_summaries_are_the_same_numbers_as_before():
    slices, expected = recorded_run()
    assert sum(s.requests for s in slices) == 3600
    # Recorded before the send lag was measured: its slices have none (an empty `send_lag` now).
    assert [{k: v for k, v in s.to_dict().items() if k != "send_lag"} for s in slices] == expected["per_second"]
    total = ClientSlice.merged(slices, slices[0].t_start, slices[-1].t_end)
    assert {name: total.summary(name) for name in expected["histograms_ms"]} == expected["histograms_ms"]
    for name, encoded in expected["hdr"].items():  # the total histogram itself, bucket for bucket
        assert list(total.histogram(name).counts) == list(HdrHistogram.decode(encoded.encode()).counts)


def test_fast_summary_matches_hdrh_on_every_kind_of_histogram():
    slices, _ = recorded_run()
    hists = [s.histogram(name) for s in slices for name in ("latency", "connect", "rpc")]
    edge = new_histogram()  # the first bucket (1 µs steps), repeated counts and the top of the range
    for us, count in ((1, 3), (2047, 1), (2048, 5), (123_456, 2), (3_600_000_000, 1)):
        edge.record_value(us, count)
    for h in [*hists, edge, HdrHistogram.decode(edge.encode())]:
        assert summary(h) == hdrh_summary(h)


def test_tally_summarises_once_from_live_histograms():
    slices, expected = recorded_run()
    tally = Tally()
    for s in slices:
        tally.add(s)
    total = tally.slice(0, 12)
    assert total._summaries["latency"][1] == expected["histograms_ms"]["latency"]  # computed when made
    assert total.to_dict()["latency"] is total.summary("latency")  # and not again


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rate": 0}, "--rate must be > 0"),
        ({"rate": -5}, "--rate must be > 0"),
        ({"rate_end": -1}, "--rate-end must be >= 0"),
        ({"duration": 0}, "--duration must be > 0"),
        ({"connections": "sometimes"}, "choose pooled or per-request"),
        ({"pool": 0}, "--pool must be >= 1"),
        ({"method": "whoami"}, "--method 'whoami'"),
        ({"via": "dns"}, "--via 'dns'"),
        ({"timeout": 0}, "--timeout must be > 0"),
    ],
)
def test_spec_checks(changes, message):
    spec = LoadSpec(**{"service": "accounts", "rate": 10, "duration": 1, **changes})
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        spec.validate()


def test_worker_count_scales_with_peak_rate():
    assert LoadSpec(service="a", rate=100, duration=1).worker_count() == 1
    assert LoadSpec(service="a", rate=100, rate_end=5000, duration=1).worker_count() == 2


def test_cli_bad_input_is_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["load", "accounts", "--rate", "0", "--duration", "5"])
    assert res.exit_code == 1 and res.output == "Error: --rate must be > 0 requests per second, got 0\n"
    res = runner.invoke(app, ["load", "accounts", "--rate", "10", "--duration", "soon"])
    assert res.exit_code == 1 and res.output.startswith("Error: --duration: expected a duration")
    res = runner.invoke(app, ["load", "accounts", "--rate", "10", "--duration", "5", "-n", "nolab"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "lab 'nolab' is not up" in res.output


# --- the engine against a real server on loopback ---


def serving(**kwargs):
    listener = listen_tcp("127.0.0.1", 0, 128)
    stop = threading.Event()
    kwargs["stop"] = stop
    t = threading.Thread(target=serve, args=(listener, PodIdentity("svc", "pod-0")), kwargs=kwargs, daemon=True)
    t.start()
    yield listener.getsockname()
    stop.set()
    t.join(timeout=5)
    listener.close()


@pytest.fixture
def server():
    yield from serving()


@pytest.fixture
def closing_server():
    """A server that closes a connection idle for 0.2 s, as the ELB does at its idle timeout."""
    yield from serving(idle_timeout=0.2)


def run_engine(addr, mode, rate=200, duration=1.0, call=None, timeout=1.0, connect_timeout=1.0):
    call = call or wire.build_call("ping")
    spec = WorkerSpec(
        index=0,
        workers=1,
        netns="",
        targets=(addr,),
        ramp=Ramp(rate, duration),
        mode=mode,
        pool=4,
        connect_timeout=connect_timeout,
        timeout=timeout,
        request=call.request,
        reply=call.reply,
    )
    sent: list = []
    engine = Engine(spec, sent.append, threading.Event(), threading.Event(), time.monotonic())
    final = engine.run()
    totals: dict[str, int] = {}
    for kind, _, _, payload in sent:
        assert kind == "slice"
        for k, v in payload["outcomes"].items():
            totals[k] = totals.get(k, 0) + v
    return final, totals, sent


@pytest.mark.parametrize("mode", ["pooled", "per-request"])
def test_engine_sends_the_schedule_and_checks_replies(server, mode):
    final, totals, sent = run_engine(server, mode)
    assert totals == {"ok": 200}
    assert final["connections"] == (4 if mode == "pooled" else 200)
    assert sum(p["scheduled"] for *_, p in sent) == 200
    assert [idx for _, _, idx, _ in sent] == list(range(len(sent)))  # every slice, in order, none skipped


def test_engine_no_stale_timeout_hits_a_reused_socket(server):
    # Sockets come and go many times per timeout: a closed socket's fd is reused while its old timers are
    # still queued; none of them may fire on the new connection.
    _, totals, _ = run_engine(server, "per-request", rate=400, duration=2.5, timeout=0.25, connect_timeout=0.2)
    assert totals == {"ok": 1000}


def test_pooled_connections_closed_while_idle_fail_on_reuse_like_a_thrift_pool(closing_server):
    # 4 calls/s over 4 pooled connections: each idles ~1 s, the server closes it after 0.2 s. The first
    # call on each connection succeeds, the next one finds it closed and fails, and so on.
    _, totals, _ = run_engine(closing_server, "pooled", rate=4, duration=2.0)
    assert totals.pop("ok") == 4
    assert set(totals) <= {"reset", "other"} and sum(totals.values()) == 4  # RST, or EOF first


def test_engine_classes_timeouts_and_refusals(server):
    _, totals, _ = run_engine(server, "per-request", rate=20, call=wire.build_call("work", work_ms=300), timeout=0.05)
    assert totals == {"read-timeout": 20}
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    _, totals, _ = run_engine(("127.0.0.1", port), "pooled", rate=20)
    assert totals == {"connect-refused": 20}


def test_help_has_examples():
    res = CliRunner().invoke(app, ["load", "--help"])
    assert res.exit_code == 0 and "Examples" in res.output and "lab load accounts --rate" in res.output


def test_load_prints_the_latency_histogram_when_calls_took_a_syn_retransmit(capsys):
    from lab.cli.commands.load import print_result

    h = new_histogram()
    for seconds in [0.002] * 95 + [1.004] * 4 + [3.01]:
        record(h, seconds)
    d = {
        "spec": {"service": "accounts", "via": "elb", "connections": "per-request"},
        "requests": 100, "seconds": 1.0, "achieved_rate": 100.0, "ok_ratio": 1.0, "interrupted": False,
        "outcomes": dict.fromkeys(outcomes.OUTCOMES, 0) | {"ok": 100}, "details": {}, "unfinished": 0,
        "not_sent": 0, "errors": [], "histograms_ms": {"latency": summary(h)}, "hdr": {"latency": encode(h)},
    }  # fmt: skip
    print_result(d)
    assert "latency histogram: [0 s, 1 s) 95, [1 s, 1.5 s) 4, [1.5 s, 3 s) 0, [3 s, 3.5 s) 1, >= 3.5 s 0" in (
        capsys.readouterr().out
    )
    fast = new_histogram()
    record(fast, 0.002)
    print_result(d | {"hdr": {"latency": encode(fast)}, "histograms_ms": {"latency": summary(fast)}})
    assert "latency histogram" not in capsys.readouterr().out  # nothing slow: no line
