"""The kind backend's pure parts: pod control patches and how Kubernetes' view becomes the lab's process view.

The JSON below has the shape `kubectl get deployments,pods -o json` prints (trimmed to the fields used).
"""

from __future__ import annotations

import json

from lab.backends.kind import OVERRIDES_ANNOTATION, RESTARTED_ANNOTATION, pod_patch, pod_views
from lab.models.topology import Topology
from lab.models.yamlio import load_model
from lab.render import kind
from tests.conftest import TOPOLOGIES

TOPO = load_model(Topology, TOPOLOGIES / "default.yaml", [])


def deployment(name: str, replicas: int = 1, overrides: dict | None = None) -> dict:
    meta: dict = {"name": name, "namespace": "default"}
    if overrides is not None:
        meta["annotations"] = {OVERRIDES_ANNOTATION: json.dumps(overrides)}
    return {"metadata": meta, "spec": {"replicas": replicas}}


def pod(lab_pod: str, generated: str, ready: bool = True, deleting: bool = False, restarts: int = 0) -> dict:
    meta: dict = {"name": generated, "labels": {kind.POD_LABEL: lab_pod}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-28T16:00:00Z"
    state = {"running": {"startedAt": "2026-11-28T16:00:00Z"}}
    return {
        "metadata": meta,
        "status": {
            "podIP": "100.96.1.2",
            "containerStatuses": [{"name": "thrift", "ready": ready, "restartCount": restarts, "state": state}],
        },
    }


def test_stop_scales_to_zero_and_touches_nothing_else():
    assert pod_patch(9090, 128, "stop", None, 1.0) == {"spec": {"replicas": 0}}


def test_restart_with_overrides_sets_flags_annotation_and_a_restart_stamp():
    patch = pod_patch(9090, 128, "restart", {"backlog": 1, "accept_delay": 0.2}, 1234.5)
    assert patch["spec"]["replicas"] == 1
    assert json.loads(patch["metadata"]["annotations"][OVERRIDES_ANNOTATION]) == {"backlog": 1, "accept_delay": 0.2}
    container = patch["spec"]["template"]["spec"]["containers"][0]
    assert container == {"name": "thrift", "args": ["--port", "9090", "--backlog", "1", "--accept-delay", "0.2"]}
    assert patch["spec"]["template"]["metadata"]["annotations"][RESTARTED_ANNOTATION] == "1234.500"


def test_start_with_empty_overrides_goes_back_to_the_topologys_flags():
    patch = pod_patch(9090, 128, "start", {}, 1.0)
    assert patch["spec"]["template"]["spec"]["containers"][0]["args"] == ["--port", "9090", "--backlog", "128"]
    assert "metadata" not in patch["spec"]["template"]  # a start is not a restart stamp


def test_views_cover_every_topology_pod_and_say_what_is_wanted():
    deps = [deployment(p.name) for p in TOPO.pods]
    deps[1] = deployment(TOPO.pods[1].name, replicas=0, overrides={"backlog": 1})
    pods = [pod(TOPO.pods[0].name, "accounts-0-7d9f-abcde", restarts=2)]
    views = {v["name"]: v for v in pod_views(TOPO, deps, pods)}
    assert set(views) == {f"pod/{p.name}" for p in TOPO.pods}
    first = views[f"pod/{TOPO.pods[0].name}"]
    assert (first["state"], first["ready"], first["restarts"], first["wanted"]) == ("running", True, 2, True)
    assert first["kubernetes_pod"] == "accounts-0-7d9f-abcde" and first["overrides"] == {}
    stopped = views[f"pod/{TOPO.pods[1].name}"]
    assert (stopped["state"], stopped["ready"], stopped["wanted"], stopped["overrides"]) == (
        "stopped",
        False,
        False,
        {"backlog": 1},
    )


def test_during_a_restart_the_live_pod_wins_over_the_terminating_one():
    name = TOPO.pods[0].name
    old = pod(name, f"{name}-old", deleting=True)
    new = pod(name, f"{name}-new", ready=False)
    for order in ([old, new], [new, old]):
        view = next(v for v in pod_views(TOPO, [deployment(name)], order) if v["name"] == f"pod/{name}")
        assert view["kubernetes_pod"] == f"{name}-new" and view["ready"] is False


def test_a_quick_kind_lab_writes_the_scaled_conntrack_timers_into_each_node(monkeypatch):
    """The node containers get the plan's sysctls at the lab's scale (setup_node stubbed: no kind cluster here)."""
    from lab.backends import kind as kind_backend
    from lab.lab import Lab

    written: dict[str, dict[str, str]] = {}
    monkeypatch.setattr(kind_backend, "setup_node", lambda host, sysctls: written.__setitem__(host, sysctls))
    lab = Lab(name="hq", topology=TOPO, backend_name="kind", time_scale=0.1)
    kind_backend.KindBackend()._setup_nodes(lab, {n.name: n.name for n in TOPO.k8s_nodes})
    assert set(written) == {n.name for n in TOPO.k8s_nodes}
    for sysctls in written.values():
        assert sysctls["net.netfilter.nf_conntrack_tcp_timeout_syn_sent"] == "12"
        assert sysctls["net.netfilter.nf_conntrack_tcp_timeout_time_wait"] == "12"
