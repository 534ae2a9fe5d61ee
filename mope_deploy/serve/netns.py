"""A private network for a local Ray: run one library call in a child process inside its own Linux network
namespace, where the only interface is loopback.

Ray's gRPC servers (GCS, raylet, core workers) bind every interface whatever node address they are given. In a
network namespace of its own (an unprivileged user namespace maps the caller's uid, so no root is needed) "every
interface" is loopback, so nothing a local Ray opens can be reached from another machine, and the build still
reads and writes the caller's files. :func:`run_private` starts such a child; where the kernel refuses the
namespace (not Linux, unprivileged user namespaces disabled) it raises :class:`PrivateNetworkError` before any
work, naming ``--allow-remote`` and ``--address`` as the ways on.

This module imports only the standard library at the top: the child enters the namespace before anything
starts a thread (``unshare(CLONE_NEWUSER)`` refuses a multithreaded process).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import importlib
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import traceback
from typing import Any, Callable

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
PR_SET_PDEATHSIG = 1
#: the exit status of a child that could not enter its namespace (nothing else was done)
NO_NAMESPACE = 3
#: seconds the child may take to exit once it has answered (its Ray shuts down before it answers)
CHILD_EXIT_S = 120.0
PARENT_ENV = "MOPE_NETNS_PARENT"
#: OSError subclasses a child's failure is rebuilt as (with errno, message and file name)
OS_ERRORS = {c.__name__: c for c in (OSError, FileNotFoundError, PermissionError, IsADirectoryError,
                                     NotADirectoryError, FileExistsError)}


class PrivateNetworkError(OSError):
    """The kernel would not give the child a network namespace of its own (names the cause and the ways on)."""


def enter_private_network() -> None:
    """Move this (single-threaded) process into a new network namespace (and, unless root, a user namespace mapping
    its own uid) and bring its loopback up. Raises :class:`PrivateNetworkError` with the kernel's reason."""
    if not sys.platform.startswith("linux"):
        raise PrivateNetworkError(errno.ENOSYS, f"network namespaces are Linux-only (this is {sys.platform})")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # a killed caller takes the child (and its Ray) with it
    parent = os.environ.get(PARENT_ENV)
    if parent and os.getppid() != int(parent):    # the caller died before the line above: do nothing
        raise PrivateNetworkError(errno.ESRCH, "the calling process is gone")
    uid, gid = os.geteuid(), os.getegid()
    # root needs no user namespace, and keeps its file access (root in a child user namespace loses it for files
    # of unmapped owners)
    flags = CLONE_NEWNET if uid == 0 else CLONE_NEWUSER | CLONE_NEWNET
    if libc.unshare(flags) != 0:
        code = ctypes.get_errno()
        eperm = ("root without CAP_SYS_ADMIN here (a container's default seccomp or capability set)" if uid == 0 else
                 "unprivileged user namespaces are disabled here (e.g. kernel.unprivileged_userns_clone=0 or "
                 "AppArmor's restrict_unprivileged_userns)")
        why = {errno.EPERM: eperm,
               errno.EINVAL: "the process already runs threads", errno.ENOSPC: "user.max_user_namespaces is reached",
               errno.EUSERS: "user.max_user_namespaces is reached"}.get(code, os.strerror(code))
        raise PrivateNetworkError(code, f"unshare({'CLONE_NEWNET' if uid == 0 else 'CLONE_NEWUSER|CLONE_NEWNET'}) "
                                        f"failed: {why}")
    if uid != 0:
        _write("/proc/self/setgroups", "deny")   # required before an unprivileged gid_map
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    try:
        _loopback_up()
    except OSError as e:
        raise PrivateNetworkError(e.errno, f"cannot bring loopback up in the new namespace: {e.strerror}") from None


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        if path.endswith("setgroups") and e.errno == errno.ENOENT:   # kernels before 3.19 have no such file
            return
        raise PrivateNetworkError(e.errno, f"cannot write {path} in the new namespace: {e.strerror}") from None


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def addresses(pid: int | str = "self") -> list[str]:
    """The local IP addresses of the network namespace ``pid`` lives in (IPv4 from ``/proc/PID/net/fib_trie``,
    IPv6 from ``/proc/PID/net/if_inet6``): what a socket bound to every interface there can be reached on. Devices
    without an address (a namespace's down fallback tunnels) add nothing."""
    found, last = [], None
    with open(f"/proc/{pid}/net/fib_trie") as f:
        for line in f:
            text = line.strip()
            if text.startswith("|--"):
                last = text[3:].strip()
            elif text.startswith("/32 host LOCAL") and last:
                found.append(last)
    try:
        with open(f"/proc/{pid}/net/if_inet6") as f:
            for line in f:
                h = line.split()[0]
                found.append(str(ipaddress.IPv6Address(int(h, 16))))
    except FileNotFoundError:                    # IPv6 disabled
        pass
    return sorted(set(found))


def loopback_only(pid: int | str = "self") -> bool:
    """True when every address of ``pid``'s network namespace is a loopback address (a listener there on 0.0.0.0 or
    :: cannot be reached from another machine); False where that cannot be read (no /proc: not Linux)."""
    try:
        return all(ipaddress.ip_address(a).is_loopback for a in addresses(pid))
    except OSError:
        return False


def run_private(target: str, payload: dict[str, Any], *, errors: tuple[type[Exception], ...] = (),
                log: Callable[[str], None] | None = None) -> Any:
    """Call ``target`` (``"package.module:function"``, taking ``payload`` and a ``log`` callable, returning
    JSON-able data) in a child process inside a private network namespace and return what it returned.

    The child's progress output reaches this process's terminal (its stderr); its ``log`` lines come to ``log``.
    An exception in the child is raised here as the most specific of ``errors`` it is an instance of (matched by
    class name), with its message; an ``OSError`` as its own class; anything else as :class:`RuntimeError` with the
    child's traceback. :class:`PrivateNetworkError` when the namespace cannot be made."""
    say = log or (lambda msg: None)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # the child starts its own, never joins one
    env.update({"PYTHONPATH": os.pathsep.join(p for p in sys.path if p), PARENT_ENV: str(os.getpid()),
                "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"})   # no route out: use caches, never wait
    cmd = [sys.executable, "-c", f"import runpy; runpy.run_path({__file__!r}, run_name='__main__')", target]
    # its own session: a Ctrl-C reaches this process only, which then stops the child (and its Ray) in order
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
                            start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None
    reply: dict[str, Any] = {}
    try:
        proc.stdin.write(json.dumps(payload))
        proc.stdin.close()
        for line in proc.stdout:
            msg = json.loads(line)
            if "log" in msg:
                say(msg["log"])
            else:
                reply = msg
                break
        try:
            rc = proc.wait(CHILD_EXIT_S)
        except subprocess.TimeoutExpired:       # answered, then hung on its way out: the answer stands
            _stop(proc)
            rc = proc.returncode
    except BaseException:
        _stop(proc)
        raise
    return _answer(reply, rc, errors)


def _stop(proc: subprocess.Popen) -> None:
    """Interrupt the child (it shuts its Ray down), then terminate, then kill: each after a grace period."""
    for sig, grace_s in ((signal.SIGINT, 30.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:                # a second Ctrl-C: no more grace
            proc.kill()
            proc.wait()
            return


def _answer(reply: dict[str, Any], rc: int, errors: tuple[type[Exception], ...]) -> Any:
    if "result" in reply:
        return reply["result"]
    err = reply.get("error")
    if err is None:
        raise RuntimeError(f"the private-network child exited with status {rc} and no answer (killed?)")
    if err["type"] == "PrivateNetworkError":
        raise PrivateNetworkError(err.get("errno") or 0, err["message"])
    if err["type"] == "KeyboardInterrupt":
        raise KeyboardInterrupt
    for name in err.get("bases", [err["type"]]):          # the most specific class the caller knows
        for cls in errors:
            if cls.__name__ == name:
                raise cls(err["message"])
        if name in OS_ERRORS and err.get("errno") is not None:
            raise OS_ERRORS[name](err["errno"], err.get("strerror") or err["message"], err.get("filename"))
    raise RuntimeError(f"{err['type']} in the private-network child: {err['message']}\n"
                       f"{err.get('traceback', '')}".rstrip())


def _child(target: str) -> int:
    """The child: namespace first (single-threaded still), then the call; answers as JSON lines on stdout."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                                # stray prints and progress bars go to the caller's stderr
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)

    def send(msg: dict[str, Any]) -> None:
        channel.write(json.dumps(msg, default=str) + "\n")

    payload = json.loads(sys.stdin.read())
    try:
        enter_private_network()
    except PrivateNetworkError as e:
        send({"error": {"type": "PrivateNetworkError", "errno": e.errno, "message": e.strerror}})
        return NO_NAMESPACE
    module, _, name = target.partition(":")
    try:
        result = getattr(importlib.import_module(module), name)(payload, log=lambda m: send({"log": str(m)}))
    except BaseException as e:  # noqa: BLE001  (every failure goes back to the caller, who raises it)
        err = {"type": type(e).__name__, "bases": [c.__name__ for c in type(e).__mro__], "message": str(e),
               "traceback": traceback.format_exc()}
        if isinstance(e, OSError):
            err.update(errno=e.errno, strerror=e.strerror, filename=e.filename)
        send({"error": err})
        return 130 if isinstance(e, KeyboardInterrupt) else 1
    send({"result": result})
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
