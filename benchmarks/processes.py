"""Processes the benchmark starts: pinned to a core, in their own session, stopped by pid.

`Pinned` starts a command under `taskset -c CPU` with its output in a log file; `stop()` sends
SIGTERM to the process group it leads (its pid), then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository: every command runs there."""
HOST = "127.0.0.1"
SERVER_CPU = "0"
LOAD_CPU = "1"
_PROBLEM = re.compile(r"Traceback|\b(ERROR|CRITICAL|FATAL|FAILED)\b|\[(emerg|alert|crit|error)\]|Unhandled", re.I)


class BenchError(RuntimeError):
    """A step of the benchmark could not be done; the message says which and why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cpu: str, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv]


def run(argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None, cwd: Path = ROOT) -> str:
    """Run a command to completion and return its stdout; raise `BenchError` with its output when it fails."""
    try:
        done = subprocess.run(
            list(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BenchError(f"{argv[0]}: {error}") from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()[-2000:]
        raise BenchError(f"{' '.join(argv[:3])} … exited with {done.returncode}: {output}")
    return done.stdout


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc/<pid>/task/*/children)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


def _vm_rss_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) if match else 0


def problems_in(log: Path, limit: int = 5) -> list[str]:
    """The first lines of a log that look like errors or tracebacks."""
    if not log.is_file():
        return []
    lines = log.read_text(errors="replace").splitlines()
    return [line.strip()[:300] for line in lines if _PROBLEM.search(line)][:limit]


def _cpu_ticks(cpu: str) -> tuple[int, int]:
    """Busy and total clock ticks of one core since boot (/proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name == f"cpu{cpu}":
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
            busy = user + nice + system + irq + softirq + steal
            return busy, busy + idle + iowait
    return 0, 0


def _process_ticks(pid: int) -> int:
    """User and system clock ticks of one process, all its threads included (/proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])


class Pinned:
    """A long-running process (a server) pinned to one core, its output in `log`."""

    def __init__(
        self, name: str, argv: Sequence[str], *, cpu: str, log: Path, env: Mapping[str, str], cwd: Path = ROOT
    ):
        self.name, self.log, self.cpu = name, log, cpu
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                pinned(cpu, argv), env=dict(env), cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_listening(self, port: int, timeout: float = 60.0) -> None:
        """Return once `port` accepts connections; raise if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise BenchError(f"{self.name} did not listen on {HOST}:{port} within {timeout:g} s: {self.log_tail()}")

    def rss_mib(self) -> float:
        """VmRSS of the process and its children, in MiB."""
        return sum(_vm_rss_kib(pid) for pid in _tree(self.pid)) / 1024

    def cpu_snapshot(self) -> tuple[int, int, int]:
        """(core busy, core total, this process tree's) clock ticks, for `foreign_share`."""
        busy, total = _cpu_ticks(self.cpu)
        return busy, total, sum(_process_ticks(pid) for pid in _tree(self.pid))

    def foreign_share(self, before: tuple[int, int, int]) -> float:
        """Share of the core's time since `before` that other processes (not this tree) kept it busy."""
        busy, total, own = (after - earlier for after, earlier in zip(self.cpu_snapshot(), before, strict=True))
        return max(0.0, (busy - own) / total) if total else 0.0

    def log_tail(self, chars: int = 1500) -> str:
        return self.log.read_text(errors="replace")[-chars:].strip()

    def log_problems(self) -> list[str]:
        return problems_in(self.log)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the process group this process leads, SIGKILL after `grace` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.process.poll() is not None:
                return
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue


def find_command(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def ensure_package(command: str, package: str) -> str:
    """The path of `command`, installing Debian's `package` with apt-get first when it is missing."""
    found = find_command(command)
    if found:
        return found
    if not find_command("apt-get"):
        raise BenchError(f"{command} is missing and there is no apt-get to install {package}")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    print(f"installing {package} with apt-get …", flush=True)
    try:
        run(install, timeout=600, env=env)
    except BenchError:
        run([*sudo, "apt-get", "update", "-q"], timeout=600, env=env)
        run(install, timeout=600, env=env)
    found = find_command(command)
    if not found:
        raise BenchError(f"{package} is installed but {command} is not on the PATH")
    return found
