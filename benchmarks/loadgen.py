"""wrk, pinned to the load core, driven by `load.lua`; its `done` hook prints one JSON line we parse."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.model import Sample
from benchmarks.processes import LOAD_CPU, BenchError, pinned

SCRIPT = Path(__file__).with_name("load.lua")
_MARK = "BENCH-JSON "


@dataclass(frozen=True)
class Load:
    """What one wrk run sends: to `url`, each line of `bodies` in turn (POST) or a bodiless GET."""

    url: str
    bodies: Path | None = None
    expect: str | None = None
    headers: tuple[str, ...] = ()
    connections: int = 16
    delay_ms: int = 0


class Wrk:
    def __init__(self, executable: str) -> None:
        self.executable = executable

    def start(self, load: Load, seconds: int) -> subprocess.Popen[str]:
        headers = [part for header in load.headers for part in ("-H", header)]
        argv = [
            self.executable,
            "-t1",
            f"-c{load.connections}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(SCRIPT),
            *headers,
            load.url,
            "--",
            str(load.bodies) if load.bodies else "-",
            load.expect or "-",
            str(load.delay_ms),
        ]
        return subprocess.Popen(pinned(LOAD_CPU, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @staticmethod
    def finish(process: subprocess.Popen[str], seconds: int) -> Sample:
        try:
            out, err = process.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise BenchError(f"wrk did not finish within {seconds + 60} s") from None
        lines = [line for line in out.splitlines() if line.startswith(_MARK)]
        if process.returncode != 0 or not lines:
            raise BenchError(f"wrk exited with {process.returncode}: {(err or out).strip()[-800:]}")
        raw = json.loads(lines[-1][len(_MARK) :])
        return Sample(
            requests=raw["requests"],
            seconds=raw["duration_us"] / 1e6,
            p50_ms=raw["p50_us"] / 1000,
            p99_ms=raw["p99_us"] / 1000,
            bad=raw["socket_errors"] + raw["bad_responses"],
        )

    def measure(self, load: Load, seconds: int) -> Sample:
        return self.finish(self.start(load, seconds), seconds)

    def measure_beside(self, main: Load, side: Load, seconds: int) -> tuple[Sample, Sample]:
        """Run `side` at the same time as `main` (both on the load core); both samples."""
        side_process = self.start(side, seconds)
        try:
            sample = self.measure(main, seconds)
        except BaseException:
            side_process.kill()
            side_process.wait()
            raise
        return sample, self.finish(side_process, seconds)
