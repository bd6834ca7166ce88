"""A local Ray cluster that can only talk to this machine: a network namespace with loopback only.

Ray 2.x probes ``8.8.8.8:53`` to find its own address even when it is given
``_node_ip_address="127.0.0.1"``, and Serve replicas listen on every
interface. So Ray never runs in this machine's own network namespace: a page
or a test runs its Ray work as a child Python process in a namespace of its
own (``unshare --net``), whose only interface is ``lo``, brought up first.
The namespace is also a PID namespace, so every process Ray starts in it
(GCS, raylet, workers, replicas) ends when the child does, however it ends.

Outside the namespace::

    ok, why = netns_available()
    if ok:
        done = run_isolated(["-m", "benchmarks.ray_serve_bench", ...], timeout_s=120)

Inside it (the child process)::

    ray = init_ray(num_cpus=2)       # refuses to start if any interface but lo exists
    ...
    assert check_sockets() == []     # no interface but lo, no socket outside 127.0.0.0/8
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "TEMP_DIR_VARIABLE",
    "check_sockets",
    "init_ray",
    "interfaces",
    "netns_available",
    "run_isolated",
    "sockets",
]

#: Environment variable through which :func:`run_isolated` hands the child its Ray temp dir.
TEMP_DIR_VARIABLE = "BATCH_INFERENCE_RAY_TMP"
#: Object store of the local cluster: small, the pages send small tensors.
OBJECT_STORE_BYTES = 150 * 2**20
_REPOSITORY = Path(__file__).resolve().parent.parent
_UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]
# Run as the namespace's first process: bring loopback up, then run Python (not exec'd:
# the shell stays PID 1, so when Python ends the kernel ends everything Ray left behind).
_INNER = 'ip link set lo up && "$0" "$@"'


def netns_available() -> tuple[bool, str]:
    """Whether :func:`run_isolated` can make its namespace here, and why not when it cannot.

    Returns
    -------
    tuple[bool, str]
        ``(True, "")``, or ``(False, reason)``: not root, no ``unshare`` or
        ``ip``, or the kernel refused the namespace (the reason quotes it).
    """
    if os.name != "posix" or not sys.platform.startswith("linux"):
        return False, f"network namespaces are a Linux feature; this is {sys.platform}"
    if os.geteuid() != 0:
        return False, f"making a network namespace needs root; running as uid {os.geteuid()}"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return False, f"the {tool!r} command is not installed"
    try:
        probe = subprocess.run(
            [*_UNSHARE, "sh", "-c", "ip link set lo up && ip -o link show"],
            capture_output=True, text=True, timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"unshare failed: {error}"
    if probe.returncode != 0:
        return False, f"unshare failed (exit {probe.returncode}): {probe.stderr.strip()[:300]}"
    names = _link_names(probe.stdout)
    if names != ["lo"]:
        return False, f"the new namespace has interfaces {names}, expected only ['lo']"
    return True, ""


def run_isolated(
    argv: list[str], timeout_s: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``sys.executable *argv`` in a fresh network (and PID) namespace with loopback only.

    The child sees the caller's environment plus ``env``, with
    ``RAY_USAGE_STATS_ENABLED=0``, a private Ray temp dir (removed
    afterwards), and this repository first on ``PYTHONPATH``. Its stdout and
    stderr are captured as text.

    Parameters
    ----------
    argv:
        Arguments after the interpreter, e.g. ``["-m", "benchmarks.ray_serve_bench", "quick"]``.
    timeout_s:
        Most seconds the child may run; then its whole process group is
        killed and :class:`subprocess.TimeoutExpired` is raised (with the
        output so far).
    env:
        Extra environment variables for the child.

    Raises
    ------
    RuntimeError
        The namespace cannot be made here (:func:`netns_available` says why).
    subprocess.TimeoutExpired
        The child ran past ``timeout_s``.
    """
    ok, why = netns_available()
    if not ok:
        raise RuntimeError(f"cannot isolate Ray: {why}")
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths
    child_env = {**os.environ, **(env or {})}
    # The child, and the Ray workers it starts, import `benchmarks` (and, in a source
    # checkout, `batch_inference`) from this repository.
    paths = [str(_REPOSITORY), *filter(None, child_env.get("PYTHONPATH", "").split(os.pathsep))]
    child_env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)),
                     **{TEMP_DIR_VARIABLE: temp_dir})
    command = [*_UNSHARE, "sh", "-c", _INNER, sys.executable, *argv]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env, start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        stdout, stderr = process.communicate(timeout=30)
        raise subprocess.TimeoutExpired(command, timeout_s, stdout, stderr) from None
    except BaseException:
        _kill_group(process)
        process.wait(timeout=30)
        raise
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _kill_group(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def init_ray(**overrides: Any) -> Any:
    """Start a local Ray cluster inside the namespace; returns the ``ray`` module.

    ``ray.init(_node_ip_address="127.0.0.1", include_dashboard=False,
    num_cpus=os.cpu_count(), object_store_memory=150 MiB, ...)``, with
    ``overrides`` on top (any keyword of ``ray.init``).

    Raises
    ------
    RuntimeError
        This process sees an interface other than ``lo``: it is not inside
        :func:`run_isolated`'s namespace, and Ray would reach the network.
    """
    others = [name for name in interfaces() if name != "lo"]
    if others:
        raise RuntimeError(
            f"refusing to start Ray: interfaces {others} besides lo are visible; "
            "run this through benchmarks.ray_local.run_isolated"
        )
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    options: dict[str, Any] = {
        "_node_ip_address": "127.0.0.1",
        "include_dashboard": False,
        "num_cpus": os.cpu_count() or 1,
        "object_store_memory": OBJECT_STORE_BYTES,
        "log_to_driver": False,
        "configure_logging": False,
    }
    temp_dir = os.environ.get(TEMP_DIR_VARIABLE)
    if temp_dir:
        options["_temp_dir"] = temp_dir
    options.update(overrides)
    ray.init(**options)
    return ray


def interfaces() -> list[str]:
    """Names of the network interfaces of this process's namespace (``/proc/self/net/dev``).

    Not ``/sys/class/net``: sysfs shows the namespace it was mounted in.
    """
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines if ":" in line)


def sockets() -> list[dict[str, Any]]:
    """Every TCP and UDP socket of this network namespace, from ``/proc/net``.

    Each is ``{"proto", "local", "remote", "state"}`` with ``"ip:port"``
    addresses; ``state`` is ``"LISTEN"``, ``"ESTABLISHED"``, or the kernel's
    hexadecimal code for the others.
    """
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        path = Path("/proc/self/net") / proto
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            state = {"0A": "LISTEN", "01": "ESTABLISHED"}.get(fields[3], fields[3])
            found.append({"proto": proto, "local": _address(fields[1]),
                          "remote": _address(fields[2]), "state": state})
    return found


def check_sockets() -> list[str]:
    """What would let Ray reach past this machine; ``[]`` when nothing does.

    Reports every interface other than ``lo``, and every socket of the
    namespace (Ray's processes and this one) whose local or remote address
    is outside ``127.0.0.0/8`` (``::1`` for IPv6). Wildcard listeners
    (``0.0.0.0``, ``::``: Serve's replicas and proxy bind those) are not
    reported: with ``lo`` the only interface they are reachable from this
    machine only, and the interface check covers that.
    """
    problems = [f"interface {name}" for name in interfaces() if name != "lo"]
    for entry in sockets():
        for side in ("local", "remote"):
            host = entry[side].rsplit(":", 1)[0]
            if not _loopback_or_unspecified(host):
                problems.append(
                    f"{entry['proto']} {entry['state']} {entry['local']} -> {entry['remote']}"
                )
                break
    return problems


def _loopback_or_unspecified(host: str) -> bool:
    address = ipaddress.ip_address(host.strip("[]"))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def _address(field: str) -> str:
    host_hex, port_hex = field.split(":")
    raw = bytes.fromhex(host_hex)
    if len(raw) == 4:
        host = str(ipaddress.IPv4Address(raw[::-1]))
        return f"{host}:{int(port_hex, 16)}"
    # IPv6: four 32-bit words, each in host (little-endian) byte order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return f"[{ipaddress.IPv6Address(words)}]:{int(port_hex, 16)}"


def _link_names(ip_output: str) -> list[str]:
    # `ip -o link show` lines: "1: lo: <LOOPBACK,UP,...> mtu ..."
    return sorted(line.split(":")[1].strip().split("@")[0]
                  for line in ip_output.splitlines() if line.strip())
