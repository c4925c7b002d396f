"""The run's results as a table on the terminal and as JSON."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from benchmarks.checks import Verdict
from benchmarks.model import FanoutResult, Meta, RunResult, ScenarioResult
from benchmarks.scenarios import Scenario

FANOUT_LIMIT_MS = 10.0


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(scenario: Scenario, run: RunResult) -> tuple[float | None, str]:
    """The scenario's req/s over its baseline's (the KDF's own rate for scenario 4), and what it is over."""
    result = run.measured(scenario.key)
    if scenario.kdf_reference:
        reference, name = run.kdf_rate, "KDF"
    elif scenario.baseline is not None:
        base = run.measured(scenario.baseline)
        reference, name = (base.rps if base else None), f"#{scenario.baseline}"
    else:
        return None, ""
    if result is None or result.rps is None or not reference:
        return None, name
    return result.rps / reference, name


def _ratio_text(scenario: Scenario, run: RunResult) -> str:
    value, name = ratio(scenario, run)
    if not name:
        return "baseline"
    return f"{value:.3f} x {name}" if value is not None else f"- x {name}"


def _scenario_row(scenario: Scenario, result: ScenarioResult, run: RunResult) -> list[str]:
    if not result.measured:
        return [scenario.key, scenario.title, f"{result.status.value}: {result.reason}"[:100]]
    growth = "-" if result.rss_growth is None else f"{result.rss_growth:+.1%}"
    foreign = "-" if result.foreign_cpu_share is None else f"{result.foreign_cpu_share:.0%}"
    return [
        scenario.key,
        scenario.title,
        _number(result.rps),
        _number(result.p50_ms, 2),
        _number(result.p99_ms, 2),
        _number(result.rss_last_mib),
        growth,
        str(result.bad),
        foreign,
        _ratio_text(scenario, run),
    ]


def verdicts(scenarios: Iterable[Scenario], run: RunResult) -> list[tuple[str, Verdict]]:
    """Every target of the measured scenarios, then the fan-out line's."""
    found = [
        (scenario.key, check.evaluate(result, run))
        for scenario in scenarios
        if (result := run.measured(scenario.key)) is not None
        for check in scenario.checks
    ]
    return found + [("fan-out", _fanout_verdict(line)) for line in run.fanout]


def _fanout_verdict(line: FanoutResult) -> Verdict:
    target = f"n={line.levels} ({line.size_bytes} B) refused < {FANOUT_LIMIT_MS:g} ms"
    ok = line.refused and line.ms is not None and line.ms < FANOUT_LIMIT_MS
    measured = f"{_number(line.ms, 2)} ms, {line.detail}" if line.ms is not None else line.detail
    return Verdict(target, measured, ok)


def render(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns; short rows (a status message) run across the remaining columns."""
    widths: dict[int, int] = {}
    for row in rows:
        if len(row) == len(rows[0]):
            for i, cell in enumerate(row):
                widths[i] = max(widths.get(i, 0), len(cell))
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def notes(scenarios: Sequence[Scenario], run: RunResult, meta: Meta) -> list[str]:
    """Lines under the tables: how it was measured, the KDF's own rate, problems in the servers' logs."""
    before, after = meta.load_average
    lines = [
        f"{meta.rounds} round(s) of {meta.seconds_per_round} s, wrk 1 thread x {meta.connections} connections on "
        f"core 1, servers on core 0; medians; proxy baseline transport: {meta.proxy_transport}",
        f"1-minute load average before / after: {before:.2f} / {after:.2f} (the run itself adds about 2)",
        "other: share of core 0 that processes outside the run used during the rounds (noise; ideally 0%)",
    ]
    if run.kdf_rate is not None:
        lines.append(f"KDF alone (scrypt n=2^14 r=8 p=1, {run.kdf_threads} threads, core 0): {run.kdf_rate:.1f}/s")
    for scenario in scenarios:
        result = run.scenarios.get(scenario.key)
        if result is None:
            continue
        if result.bad:
            lines.append(f"#{scenario.key}: {result.bad} answers were errors or lacked {scenario.expect!r}")
        lines += [f"#{scenario.key} log: {line}" for line in result.log_problems]
    return lines


def text(scenarios: Sequence[Scenario], run: RunResult, meta: Meta) -> str:
    header = ["#", "scenario", "req/s", "p50 ms", "p99 ms", "RSS MiB", "RSS Δ", "bad", "other", "ratio"]
    table = [header] + [_scenario_row(s, run.scenarios[s.key], run) for s in scenarios if s.key in run.scenarios]
    targets = [["#", "target", "", "measured"]] + [
        [key, v.target, v.mark, v.measured[:90]] for key, v in verdicts(scenarios, run)
    ]
    return "\n\n".join([render(table), render(targets), "\n".join(notes(scenarios, run, meta))]).rstrip() + "\n"


def _scenario_json(scenario: Scenario, run: RunResult) -> dict[str, Any]:
    result = run.scenarios[scenario.key]
    value, reference = ratio(scenario, run)
    return {
        "key": scenario.key,
        "title": scenario.title,
        "status": result.status.value,
        "reason": result.reason,
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "bad": result.bad,
        "rss_mib": result.rss_last_mib,
        "rss_growth": result.rss_growth,
        "ratio": value,
        "ratio_to": reference or None,
        "healthz_p99_ms": result.side_p99_ms,
        "rounds": [{**asdict(s), "rps": s.rps} for s in result.rounds],
        "healthz_rounds": [asdict(s) for s in result.side],
        "rss_mib_rounds": result.rss_mib,
        "foreign_cpu_share": result.foreign_cpu_share,
        "foreign_cpu_rounds": result.foreign_cpu,
        "log_problems": result.log_problems,
        "checks": [asdict(check.evaluate(result, run)) for check in scenario.checks] if result.measured else [],
    }


def as_json(scenarios: Sequence[Scenario], run: RunResult, meta: Meta) -> dict[str, Any]:
    return {
        "meta": asdict(meta),
        "scenarios": [_scenario_json(s, run) for s in scenarios if s.key in run.scenarios],
        "kdf": {"threads": run.kdf_threads, "hashes_per_s": run.kdf_rate, "rounds": run.kdf_hashes_per_s},
        "fanout": [{**asdict(line), "check": asdict(_fanout_verdict(line))} for line in run.fanout],
        "targets": [{"scenario": key, **asdict(v)} for key, v in verdicts(scenarios, run)],
    }
