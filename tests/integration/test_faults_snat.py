"""snat-port-range: kube-proxy's masquerade narrowed to two ports, legacy and modern rules, seen with
conntrack -S (insert_failed, drop), the clients' latency histogram and iptables-save after the revert."""

from __future__ import annotations

import pytest

from lab import faults
from lab.errors import LabError
from lab.load import LoadSpec, run_load
from lab.load.stats import decode_into, new_histogram
from lab.scenarios.metrics import latency_bands
from tests.conftest import unique_lab_name
from tests.integration.test_faults import assert_same, ct_stat, snapshot

pytestmark = pytest.mark.root

FLAVOURS = {"legacy": [], "modern": ["kube_proxy.flavour=modern", "cluster.kubernetes_version=1.28.0"]}


def _clashes(lab) -> tuple[int, int]:
    nodes = [n.name for n in lab.topology.k8s_nodes]
    return sum(ct_stat(lab, n, "insert_failed") for n in nodes), sum(ct_stat(lab, n, "drop") for n in nodes)


def _load(lab) -> dict:
    # Per-request calls through every ELB node to every node (cross-zone on): each node masquerades SYNs
    # from three ELB nodes at once; a 5 s timeout lets a SYN resent after 1 s or 3 s show as a slow call.
    spec = LoadSpec("accounts", rate=60, duration=4, connections="per-request", connect_timeout=1, timeout=5)
    return run_load(lab, spec).to_dict()


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_a_narrowed_masquerade_range_drops_syns_at_confirmation(make_lab, flavour):
    lab = make_lab("seed-2017.yaml", ["elb.cross_zone=true", *FLAVOURS[flavour]], name=unique_lab_name("sn"))
    before = snapshot(lab)
    start = _clashes(lab)
    quiet = _load(lab)
    assert _clashes(lab) == start, "no clash with kube-proxy's own (unrestricted) masquerade"
    assert latency_bands(quiet)["[1 s, 1.5 s)"] == 0

    fid = faults.apply(lab, "snat-port-range", None, ["ports=2"])["fault"]["id"]
    # A second range on a node already narrowed would silently win or lose (chains are first match): refused.
    with pytest.raises(LabError, match=rf"^masquerade of node-a1 is already changed by fault {fid}; revert it first$"):
        faults.apply(lab, "snat-port-range", "node-a1", ["ports=4"])
    narrowed = _load(lab)
    insert_failed, drop = _clashes(lab)
    # This kernel picks a random port in the range with or without --random-fully: both flavours clash.
    assert insert_failed > start[0] and drop > start[1]
    bands = latency_bands(narrowed)
    assert bands["[1 s, 1.5 s)"] > 0, bands  # the dropped SYN, resent 1 s later
    h = new_histogram()
    decode_into(h, narrowed["hdr"]["latency"])
    assert h.get_value_at_percentile(99) >= 1_000_000  # p99 >= 1 s (µs)

    faults.revert(lab)
    assert_same(before, snapshot(lab))
    after = _clashes(lab)
    _load(lab)
    assert _clashes(lab) == after
