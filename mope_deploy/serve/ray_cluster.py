"""Connecting to Ray (or starting a local one) for `mope index --ray`, and what the cluster can hold.

A local Ray is started with its advertised address on loopback and without the dashboard. Ray's own gRPC servers
bind every interface whatever address they are given, so without ``--allow-remote`` the local Ray runs in a
private network namespace whose only interface is loopback (:mod:`.netns`, :func:`needs_private_network`);
:func:`exposed_listeners` then checks that none of its listening sockets is reachable from another machine.
"""

from __future__ import annotations

import importlib
import ipaddress
import os
from typing import Any

from .errors import ServeError
from .netns import loopback_only


class RayResourceError(ServeError):
    """The Ray cluster cannot hold what was asked (names the resources and the fix)."""


def require_ray(component: str = "data"):
    """``ray``, with ``ray.<component>`` (data: indexing, serve: serving) importable, or a ServeError naming the
    extra to install."""
    try:
        import ray
        importlib.import_module(f"ray.{component}")
    except ImportError as e:
        raise ServeError(f"Ray is not installed ({e}): pip install 'mope-deploy[ray]' (ray[serve,data])") from None
    return ray


def ray_address(address: str | None) -> str | None:
    """The cluster to join: ``address``, else ``RAY_ADDRESS``, else None (start a new local one)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def start_ray(address: str | None, *, allow_remote: bool = False, num_cpus: int | None = None,
              log_to_driver: bool = False) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``) or start a local Ray; returns True when this call started (and
    so owns) it. An already initialised Ray (a caller's) is used as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=log_to_driver, configure_logging=False)
    address = ray_address(address)
    if address is None:
        address = "local"                   # a new cluster: never one `ray start` left in /tmp/ray
        kwargs["num_cpus"] = num_cpus
        if not allow_remote:
            kwargs["_node_ip_address"] = "127.0.0.1"
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if address == "local":
            raise ServeError(f"cannot start a local Ray: {first}") from None
        raise ServeError(f"cannot connect to Ray at {address}: {first}; check --address (ray://HEAD:10001 or auto) "
                         "or RAY_ADDRESS") from None
    return True


def needs_private_network(opts) -> bool:
    """Whether a build with these :class:`~.build.RayOptions` would start a local Ray of its own that must be
    confined to loopback: no ``address`` (nor ``RAY_ADDRESS``), no ``allow_remote``, not already confined, and no
    Ray running in this process (a caller's Ray is used as it is)."""
    if ray_address(opts.address) is not None or opts.allow_remote or opts.private:
        return False
    return not require_ray().is_initialized()


def cluster_cpus() -> tuple[float, float, dict[str, float]]:
    """(total CPUs, free CPUs now, all resources) of the connected cluster."""
    ray = require_ray()
    total = {k: float(v) for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
    free = ray.available_resources()
    return total.get("CPU", 0.0), float(free.get("CPU", 0.0)), total


def describe_resources() -> str:
    total, free, res = cluster_cpus()
    other = ", ".join(f"{k} {v:g}" for k, v in sorted(res.items()) if k != "CPU" and "memory" not in k)
    return f"{total:g} CPU in total, {free:g} free now" + (f"; also {other}" if other else "")


def plan_workers(requested: int | None, cpus_per_worker: float = 1.0) -> int:
    """Encoder actors to start: ``requested``, refused when the cluster cannot hold them (never queued forever);
    None = its CPUs - 1 (one left for Ray Data and the driver), at least 1."""
    total, _, _ = cluster_cpus()
    if total < cpus_per_worker:
        raise RayResourceError(f"the Ray cluster has no CPU for an encoder actor ({describe_resources()}); add a "
                               "node or start Ray with --num-cpus")
    fits = int(total // cpus_per_worker)
    if requested is None:
        return max(1, fits - 1)
    if requested > fits:
        raise RayResourceError(f"--ray-workers {requested} asks for {requested * cpus_per_worker:g} CPU "
                               f"({cpus_per_worker:g} per encoder actor) but the Ray cluster has "
                               f"{describe_resources()}: use --ray-workers {fits} or fewer (or leave it out: "
                               f"{max(1, fits - 1)} on this cluster)")
    return requested


def exposed_listeners(pids: list[int] | None = None) -> list[str]:
    """``name pid address:port`` of every listening socket of this process's children (a local Ray's services)
    that another machine could reach: not on a loopback address, in a network namespace that has a non-loopback
    address (:func:`~.netns.loopback_only`). Empty without psutil."""
    try:
        import psutil
    except ImportError:
        return []
    procs = [psutil.Process(p) for p in pids] if pids is not None else psutil.Process().children(recursive=True)
    out = []
    for p in procs:
        try:
            conns = p.net_connections(kind="inet")
            name = p.name()
        except (psutil.Error, OSError):
            continue
        if loopback_only(p.pid):                      # there "every interface" is loopback
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN and not _loopback(c.laddr.ip):
                out.append(f"{name} {p.pid} {c.laddr.ip}:{c.laddr.port}")
    return out


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.split("%")[0]).is_loopback
    except ValueError:
        return ip == "localhost"
