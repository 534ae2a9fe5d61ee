"""The never-hang rules of `mope index --ray`, without starting Ray: the worker count against the cluster's CPUs,
and the stall timeout of the chunk stream."""

from __future__ import annotations

import threading
import time

import pytest

from mope_deploy.serve import ray_cluster, ray_index
from mope_deploy.serve.ray_cluster import RayResourceError, plan_workers


@pytest.fixture
def cluster(monkeypatch):
    def set_cpus(total: float, free: float | None = None):
        res = {"CPU": total, "memory": 1e9}
        monkeypatch.setattr(ray_cluster, "cluster_cpus", lambda: (total, total if free is None else free, res))
    return set_cpus


def test_workers_fit_the_cluster(cluster):
    cluster(2)
    assert plan_workers(None) == 1 and plan_workers(2) == 2
    with pytest.raises(RayResourceError, match=r"--ray-workers 3 asks for 3 CPU .* 2 CPU in total.*2 or fewer"):
        plan_workers(3)
    cluster(16, free=3)
    assert plan_workers(None) == 15
    cluster(0.5)
    with pytest.raises(RayResourceError, match="no CPU"):
        plan_workers(None)


def test_a_stalled_stream_fails_with_the_resources_instead_of_hanging(monkeypatch):
    monkeypatch.setattr(ray_index, "describe_resources", lambda: "2 CPU in total, 0 free now")
    never = threading.Event()

    def stuck():
        yield {"chunk": 0}
        never.wait(30)                     # a worker that never gets a CPU
        yield {"chunk": 1}

    t0 = time.monotonic()
    rows = ray_index._with_stall_timeout(stuck(), 0.5, 2)
    assert next(rows) == {"chunk": 0}
    with pytest.raises(RayResourceError, match=r"no embedded chunk for \d+ s with 2 encoder.*0 free now"):
        next(rows)
    assert time.monotonic() - t0 < 5
    never.set()


def test_a_worker_error_reaches_the_driver():
    def failing():
        yield {"chunk": 0}
        raise RuntimeError("actor died")

    rows = ray_index._with_stall_timeout(failing(), 5, 1)
    assert next(rows) == {"chunk": 0}
    with pytest.raises(RuntimeError, match="actor died"):
        next(rows)
