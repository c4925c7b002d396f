"""What a benchmark run measured: one `Sample` per wrk run, gathered per scenario and per run."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from enum import StrEnum


class Status(StrEnum):
    OK = "ok"
    SKIPPED = "skipped"
    """Something the scenario needs is absent (Node, PostgreSQL): not an error."""
    FAILED = "failed"
    """The scenario could not be measured (its server did not start, answered wrongly, ...)."""


@dataclass(frozen=True)
class Sample:
    """One wrk run: its throughput, latency percentiles and the answers that were not the expected one."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    bad: int
    """Socket errors, timeouts, non-2xx statuses and 2xx bodies without the expected text."""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class ScenarioResult:
    """Every round of one scenario, and the server's RSS after the warm-up and after each round."""

    key: str
    status: Status = Status.OK
    reason: str = ""
    rounds: list[Sample] = field(default_factory=list)
    side: list[Sample] = field(default_factory=list)
    """The /healthz side load run beside each round (scenario 4)."""
    rss_mib: list[float] = field(default_factory=list)
    """RSS after each measured round."""
    foreign_cpu: list[float] = field(default_factory=list)
    """Share of the server core other processes used during each round: noise from outside the run."""
    log_problems: list[str] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return self.status is Status.OK and bool(self.rounds)

    @property
    def rps(self) -> float | None:
        return _median([s.rps for s in self.rounds])

    @property
    def p50_ms(self) -> float | None:
        return _median([s.p50_ms for s in self.rounds])

    @property
    def p99_ms(self) -> float | None:
        return _median([s.p99_ms for s in self.rounds])

    @property
    def bad(self) -> int:
        return sum(s.bad for s in self.rounds)

    @property
    def side_p99_ms(self) -> float | None:
        return _median([s.p99_ms for s in self.side])

    @property
    def foreign_cpu_share(self) -> float | None:
        return _median(self.foreign_cpu)

    @property
    def rss_last_mib(self) -> float | None:
        return self.rss_mib[-1] if self.rss_mib else None

    @property
    def rss_growth(self) -> float | None:
        """RSS after the last round relative to after the first (None with fewer than two rounds)."""
        if len(self.rss_mib) < 2 or not self.rss_mib[0]:
            return None
        return self.rss_mib[-1] / self.rss_mib[0] - 1

    def fail(self, reason: str, status: Status = Status.FAILED) -> None:
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class FanoutResult:
    """One fragment fan-out document sent to a fresh gateway: how long until it was refused."""

    levels: int
    """n: fragments F0..Fn, 2^n paths."""
    size_bytes: int
    ms: float | None
    """None when no answer came within the timeout."""
    refused: bool
    detail: str


@dataclass
class RunResult:
    """A whole run: each scenario's result, the KDF's own rate and the fan-out line."""

    scenarios: dict[str, ScenarioResult] = field(default_factory=dict)
    kdf_hashes_per_s: list[float] = field(default_factory=list)
    kdf_threads: int = 0
    fanout: list[FanoutResult] = field(default_factory=list)

    @property
    def kdf_rate(self) -> float | None:
        return _median(self.kdf_hashes_per_s)

    def measured(self, key: str) -> ScenarioResult | None:
        result = self.scenarios.get(key)
        return result if result is not None and result.measured else None


@dataclass(frozen=True)
class Meta:
    """How and where a run was made."""

    commit: str
    dirty: bool
    """Uncommitted changes to tracked files were in the tree."""
    quick: bool
    rounds: int
    seconds_per_round: int
    warmup_seconds: int
    connections: int
    only: tuple[str, ...]
    python: str
    proxy_transport: str
    """The httpx transport of the plain proxy route (scenario 5's baseline)."""
    started: str
    duration_s: float
    load_average: tuple[float, float]
    """The machine's 1-minute load average before and after the run."""
