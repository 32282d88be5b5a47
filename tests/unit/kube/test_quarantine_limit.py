"""max_quarantined: counts and percentages of the GPU fleet."""

from __future__ import annotations

import json

import pytest
from gpufleet.kube.quarantine import QuarantineRefused, check_quarantine_limit, quarantine_limit


def node(name, gpus=8, quarantined=False):
    annotations = {"gpufleet.io/quarantine": json.dumps({"reason": "x"})} if quarantined else {}
    return {"metadata": {"name": name, "annotations": annotations, "labels": {}},
            "status": {"capacity": {"nvidia.com/gpu": str(gpus)} if gpus else {}}}


@pytest.mark.parametrize(("value", "fleet", "limit"), [
    ("3", 100, 3), (3, 100, 3), ("10%", 100, 10), ("10%", 15, 1), ("10%", 5, 1), ("50%", 5, 2),
    (None, 10, None), ("", 10, None)])
def test_quarantine_limit(value, fleet, limit):
    assert quarantine_limit(value, fleet) == limit


def test_limit_counts_only_gpu_nodes_and_allows_reruns():
    nodes = [node("a", quarantined=True), node("b"), node("c"), node("d"), node("cpu", gpus=0)]
    with pytest.raises(QuarantineRefused, match=r"1 of 4 GPU nodes .*\(a\)"):
        check_quarantine_limit(nodes, "b", "25%", force=False)
    assert check_quarantine_limit(nodes, "a", "25%", force=False)["quarantined"] == 1
    assert check_quarantine_limit(nodes, "b", "25%", force=True)["limit"] == 1
    assert check_quarantine_limit(nodes, "b", "2", force=False)["limit"] == 2
