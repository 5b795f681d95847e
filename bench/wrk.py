"""Install, run and parse wrk, the HTTP load generator scripts/bench drives."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

from bench import say

# wrk prints sizes with binary prefixes and durations with these units.
SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}
TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
PERCENTILES = ("50", "75", "90", "99")


@dataclass
class WrkResult:
    """What one wrk run measured."""

    requests: int = 0
    requests_per_sec: float = 0.0
    transfer_per_sec: float = 0.0  # bytes per second, as wrk counts them (headers included)
    latency_ms: dict[str, float] = field(default_factory=dict)  # percentile -> milliseconds
    non_2xx_3xx: int = 0
    socket_errors: int = 0

    def as_dict(self) -> dict:
        """The result as plain JSON-able data."""
        return asdict(self)


def as_root(command: list[str]) -> list[str]:
    """``command`` prefixed with sudo unless this process already runs as root."""
    return command if os.geteuid() == 0 else ["sudo", *command]


def ensure_wrk() -> str:
    """The path of wrk, installing it with apt-get when missing.

    ``apt-get update`` runs only when the plain install fails: it is slow, and the package
    lists are usually fresh enough already.
    """
    found = shutil.which("wrk")
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = as_root(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"])
    say("wrk is missing: installing it with apt-get")
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
        say("apt-get install failed: running apt-get update first, then retrying")
        subprocess.run(as_root(["apt-get", "update", "-qq"]), env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(install, env=env, check=True, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("apt-get installed wrk but it is not on PATH")
    return found


def wrk_version(wrk: str) -> str:
    """wrk's version word (``wrk -v`` prints it on its first line and exits 1)."""
    result = subprocess.run([wrk, "-v"], capture_output=True, text=True)
    words = (result.stdout or result.stderr).split()
    return words[1] if len(words) > 1 else "unknown"


def to_bytes(number: str, unit: str) -> float:
    """A wrk size such as ``2.44`` ``GB`` in bytes."""
    return float(number) * SIZE_UNITS[unit]


def parse(output: str) -> WrkResult:
    """The numbers of one ``wrk --latency`` report; missing lines leave zeros."""
    result = WrkResult()
    if match := re.search(r"^\s*(\d+) requests in ", output, re.M):
        result.requests = int(match.group(1))
    if match := re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M):
        result.requests_per_sec = float(match.group(1))
    if match := re.search(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)", output, re.M):
        result.transfer_per_sec = to_bytes(*match.groups())
    for percent, number, unit in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M):
        if percent in PERCENTILES:
            result.latency_ms[percent] = float(number) * TIME_UNITS_MS[unit]
    if match := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        result.non_2xx_3xx = int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        result.socket_errors = sum(int(n) for n in match.groups())
    return result


def run(wrk: str, url: str, headers: dict[str, str], threads: int, connections: int,
        duration: float, timeout: float | None = None) -> tuple[WrkResult, str]:
    """Run wrk against ``url`` once; the parsed result and wrk's own report.

    ``timeout`` is wrk's --timeout (its default is 2 s): slower answers count as socket
    errors and are left out of the latencies.
    """
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if timeout is not None:
        command += ["--timeout", f"{timeout:g}s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    # wrk stops by itself after -d; the timeout only guards against a wedged run.
    result = subprocess.run([*command, url], capture_output=True, text=True,
                            timeout=duration + (timeout or 0) + 60)
    if result.returncode != 0 or "Requests/sec" not in result.stdout:
        raise RuntimeError(f"wrk failed ({result.returncode}) on {url}:\n{result.stdout}{result.stderr}")
    return parse(result.stdout), result.stdout
