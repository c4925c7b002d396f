"""The issue's targets, each a small check over a measured scenario and the run around it.

A check only reports: a missed target is a ✗ in the table, never a failing exit status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from benchmarks.model import RunResult, ScenarioResult


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    ok: bool | None
    """None when the check could not be evaluated (its reference was not measured)."""

    @property
    def mark(self) -> str:
        return {True: "✓", False: "✗", None: "-"}[self.ok]


class Check(Protocol):
    def evaluate(self, result: ScenarioResult, run: RunResult) -> Verdict: ...


def _unmeasured(target: str, why: str) -> Verdict:
    return Verdict(target, f"n/a ({why})", None)


def _ratio(result: ScenarioResult, run: RunResult, baseline: str) -> float | None:
    reference = run.measured(baseline)
    if reference is None or not reference.rps or result.rps is None:
        return None
    return result.rps / reference.rps


@dataclass(frozen=True)
class RatioAtLeast:
    """req/s at least `minimum` x the req/s of scenario `baseline` in the same run."""

    baseline: str
    minimum: float

    def evaluate(self, result: ScenarioResult, run: RunResult) -> Verdict:
        target = f"req/s ≥ {self.minimum:.2f} x #{self.baseline}"
        ratio = _ratio(result, run, self.baseline)
        if ratio is None:
            return _unmeasured(target, f"#{self.baseline} not measured")
        return Verdict(target, f"{ratio:.3f} x #{self.baseline}", ratio >= self.minimum)


@dataclass(frozen=True)
class CostBelow:
    """What this variant costs over scenario `baseline`: 1 - req/s ÷ baseline req/s, below `maximum`."""

    baseline: str
    maximum: float
    what: str

    def evaluate(self, result: ScenarioResult, run: RunResult) -> Verdict:
        target = f"{self.what} < {self.maximum:.0%} of #{self.baseline}'s req/s"
        ratio = _ratio(result, run, self.baseline)
        if ratio is None:
            return _unmeasured(target, f"#{self.baseline} not measured")
        return Verdict(target, f"{1 - ratio:+.1%}", 1 - ratio < self.maximum)


@dataclass(frozen=True)
class P50Within:
    """p50 at most `milliseconds` above scenario `baseline`'s p50."""

    baseline: str
    milliseconds: float

    def evaluate(self, result: ScenarioResult, run: RunResult) -> Verdict:
        target = f"p50 ≤ #{self.baseline}'s p50 + {self.milliseconds:g} ms"
        reference = run.measured(self.baseline)
        if reference is None or reference.p50_ms is None or result.p50_ms is None:
            return _unmeasured(target, f"#{self.baseline} not measured")
        excess = result.p50_ms - reference.p50_ms
        return Verdict(target, f"{excess:+.2f} ms", excess <= self.milliseconds)


@dataclass(frozen=True)
class KdfShare:
    """Successes/s at least `minimum` x the KDF's own hashes/s on the same core."""

    minimum: float

    def evaluate(self, result: ScenarioResult, run: RunResult) -> Verdict:
        target = f"req/s ≥ {self.minimum:.2f} x KDF hashes/s"
        if run.kdf_rate is None or result.rps is None:
            return _unmeasured(target, "KDF rate not measured")
        share = result.rps / run.kdf_rate
        return Verdict(target, f"{share:.3f} x {run.kdf_rate:.1f}/s", share >= self.minimum)


@dataclass(frozen=True)
class SideP99Below:
    """The side load's p99 (GET /healthz) under `milliseconds` while the scenario runs."""

    milliseconds: float

    def evaluate(self, result: ScenarioResult, run: RunResult) -> Verdict:
        target = f"/healthz p99 < {self.milliseconds:g} ms meanwhile"
        p99 = result.side_p99_ms
        if p99 is None:
            return _unmeasured(target, "no side load")
        return Verdict(target, f"{p99:.2f} ms", p99 < self.milliseconds)


@dataclass(frozen=True)
class RssGrowthWithin:
    """RSS after the last round within `fraction` of the RSS after the first round."""

    fraction: float

    def evaluate(self, result: ScenarioResult, run: RunResult) -> Verdict:
        target = f"RSS last vs first round within {self.fraction:.0%}"
        growth = result.rss_growth
        if growth is None:
            return _unmeasured(target, "one round")
        return Verdict(target, f"{growth:+.1%}", growth <= self.fraction)
