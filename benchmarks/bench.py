"""`scripts/bench [--quick] [--only 1,2,...] [--output FILE]`: the gateway beside its baselines and peers.

Starts every server itself on loopback (pinned to core 0; wrk and nginx on core 1), warms each
up, measures every scenario in alternating rounds, prints the medians with each scenario's ratio
to its baseline measured in the same run and each target with ✓/✗, and writes the results as
JSON. It stops every server it started, whatever happens. A missed target never fails the run;
exit status 1 means a scenario could not be measured, 2 that the run could not start.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType

import httpx

from benchmarks import fanout, infra, kdf, report
from benchmarks.loadgen import Load, Wrk
from benchmarks.model import Meta, RunResult, ScenarioResult, Status
from benchmarks.peers.plain import transport_name
from benchmarks.processes import (
    HOST,
    ROOT,
    SERVER_CPU,
    BenchError,
    Pinned,
    ensure_package,
    free_port,
    problems_in,
    run,
)
from benchmarks.scenarios import GROUPS, SCENARIOS, Need, Scenario, Server, registry, request_bodies, select

DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "latest.json"
FANOUT_LEVELS = (20, 90)
LIMIT = "1000000"
"""Rate limits on, set high enough never to trip."""


@dataclass(frozen=True)
class Options:
    quick: bool
    rounds: int
    seconds: int
    warmup: int
    connections: int
    groups: tuple[str, ...]
    output: Path

    @property
    def fanout_timeout(self) -> float:
        return 5.0 if self.quick else 20.0


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one short round per scenario (CI: proves it works)")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"subset of {','.join(GROUPS)} (baselines added)")
    parser.add_argument("--rounds", type=int, help="measured rounds per scenario (default 3; --quick 1)")
    parser.add_argument("--seconds", type=int, help="seconds per round (default 10; --quick 2)")
    parser.add_argument("--warmup", type=int, help="warm-up seconds per server (default 3; --quick 1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results (default %(default)s)")
    args = parser.parse_args(argv)
    groups = tuple(g.strip() for g in args.only.split(",") if g.strip())
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)} (choose from {','.join(GROUPS)})")
    quick = bool(args.quick)
    return Options(
        quick=quick,
        rounds=max(1, args.rounds or (1 if quick else 3)),
        seconds=max(1, args.seconds or (2 if quick else 10)),
        warmup=max(1, args.warmup or (1 if quick else 3)),
        connections=max(1, args.connections),
        groups=groups,
        output=args.output,
    )


@dataclass
class Live:
    """A started server and the load it gets (and, for scenario 4, the /healthz load beside it)."""

    scenario: Scenario
    server: Pinned
    load: Load
    side: Load | None
    result: ScenarioResult


def _probe(load: Load) -> None:
    """One request as wrk will send it: the answer must be a 2xx holding the expected text."""
    assert load.bodies is not None
    body = load.bodies.read_text().splitlines()[0]
    headers = dict(header.split(": ", 1) for header in load.headers)
    try:
        response = httpx.post(load.url, content=body, headers=headers, timeout=60)
    except httpx.HTTPError as error:
        raise BenchError(f"probe of {load.url}: {error!r}") from None
    if not response.is_success or (load.expect and load.expect not in response.text):
        raise BenchError(
            f"probe of {load.url}: HTTP {response.status_code} without {load.expect!r}: {response.text[:300]}"
        )


class Bench:
    """One run: its folder, the servers it started (stopped by `stack`) and what they measured."""

    def __init__(self, options: Options, stack: ExitStack, workdir: Path) -> None:
        self.options, self.stack, self.workdir = options, stack, workdir
        self.result = RunResult()
        self.wrk = Wrk(ensure_package("wrk", "wrk"))
        self.context = {"hs256_secret": secrets.token_urlsafe(32)}
        self.unavailable: dict[Need, tuple[Status, str]] = {}
        self.live: list[Live] = []

    # -- what the scenarios stand on ------------------------------------------------------------

    def prepare(self, needs: set[Need]) -> None:
        """Start nginx, install the Apollo peer, create the PostgreSQL schema: what the scenarios need."""
        steps: dict[Need, Callable[[], None]] = {
            Need.NGINX: self._nginx,
            Need.NODE: self._node,
            Need.POSTGRES: self._postgres,
        }
        for need in sorted(needs, key=lambda n: n.value):
            try:
                steps[need]()
            except BenchError as error:
                status = Status.FAILED if need is Need.NGINX else Status.SKIPPED
                self.unavailable[need] = (status, f"{need.value}: {error}")

    def _nginx(self) -> None:
        server, url = infra.start_nginx(self.workdir)
        self.stack.callback(server.stop)
        self.context["upstream_url"] = url

    def _node(self) -> None:
        reason = infra.install_apollo()
        if reason:
            raise BenchError(reason)

    def _postgres(self) -> None:
        url, schema = infra.postgres_url(), f"bench_{secrets.token_hex(4)}"
        infra.postgres(url, f'CREATE SCHEMA "{schema}"')
        self.stack.callback(infra.postgres, url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        self.context |= {"postgres_url": url, "postgres_schema": schema}

    # -- servers --------------------------------------------------------------------------------

    def _env(self, scenario: Scenario, port: int, folder: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        if scenario.server is Server.GATEWAY:
            env |= {
                "GATEWAY_ENV_FILE": "",
                "GATEWAY_DATA_DIR": str(folder),
                "GATEWAY_LOG_LEVEL": "warning",
                "GATEWAY_DEMO_DATA": "false",
                "GATEWAY_INSECURE_DISABLE_AUTH": "true",
                "GATEWAY_RATE_LIMIT_DEVICE": LIMIT,
                "GATEWAY_RATE_LIMIT_CALLER": LIMIT,
            }
        return env | {"PORT": str(port)} | {k: v.format_map(self.context) for k, v in scenario.env.items()}

    @staticmethod
    def _argv(scenario: Scenario, port: int) -> list[str]:
        where = ["--host", HOST, "--port", str(port)]
        if scenario.server is Server.APOLLO:
            return infra.node_command()
        if scenario.server is Server.GATEWAY:
            return [sys.executable, "-m", "gateway", "serve", *where]
        plain = "benchmarks.peers.plain:app"
        return [sys.executable, "-m", "uvicorn", plain, *where, "--log-level", "warning", "--no-access-log"]

    def _bodies(self, study: str) -> Path:
        path = self.workdir / f"bodies-{study}.txt"
        if not path.exists():
            path.write_text(request_bodies(study))
        return path

    @staticmethod
    def _gateway_cli(env: dict[str, str], *args: str) -> str:
        return run([sys.executable, "-m", "gateway", *args], env=env, timeout=120).strip()

    def start(self, scenario: Scenario, name: str) -> tuple[Pinned, Load]:
        """Start the scenario's server (seeded, with a token when it needs one) and probe it once."""
        folder = self.workdir / name
        folder.mkdir()
        port = free_port()
        env = self._env(scenario, port, folder)
        headers = ["Content-Type: application/json"]
        if scenario.seeded:
            (folder / "registry.json").write_text(json.dumps(registry()))
            self._gateway_cli(env, "migrate")  # a PostgreSQL store is migrated before anything is written
            self._gateway_cli(env, "seed", str(folder / "registry.json"))
        if scenario.authenticated:
            headers.append(f"Authorization: Bearer {self._gateway_cli(env, 'token', '--study', '*', '--mode', '*')}")
        server = Pinned(name, self._argv(scenario, port), cpu=SERVER_CPU, log=folder / "server.log", env=env)
        self.stack.callback(server.stop)
        server.wait_listening(port)
        url = f"http://{HOST}:{port}{scenario.path}"
        load = Load(url, self._bodies(scenario.study), scenario.expect, tuple(headers), self.options.connections)
        _probe(load)
        return server, load

    def launch(self, scenario: Scenario) -> None:
        result = self.result.scenarios.setdefault(scenario.key, ScenarioResult(scenario.key))
        blocked = [self.unavailable[n] for n in sorted(scenario.needs, key=lambda n: n.value) if n in self.unavailable]
        if blocked:
            result.fail(blocked[0][1], blocked[0][0])
            return
        name = f"scenario-{scenario.key}"
        try:
            server, load = self.start(scenario, name)
        except BenchError as error:
            result.fail(str(error))
            result.log_problems = problems_in(self.workdir / name / "server.log")
            return
        healthz = Load(load.url.removesuffix(scenario.path) + "/healthz", expect='"ok"', connections=1, delay_ms=10)
        self.live.append(Live(scenario, server, load, healthz if scenario.kdf_reference else None, result))

    # -- measuring ------------------------------------------------------------------------------

    def _guarded(self, live: Live, step: Callable[[], None]) -> None:
        """Run one step of a scenario; a failure marks that scenario failed and drops it from the run."""
        try:
            step()
        except BenchError as error:
            live.result.fail(str(error))
            live.result.log_problems = live.server.log_problems()
            self.live.remove(live)

    def warm_up(self) -> None:
        for live in list(self.live):
            self._guarded(live, partial(self._warm, live))

    def _warm(self, live: Live) -> None:
        print(f"  warming up #{live.scenario.key}", flush=True)
        self.wrk.measure(live.load, self.options.warmup)

    def measure_round(self, number: int) -> None:
        """One round of every live scenario, in an order that rotates from round to round."""
        order = self.live[number % len(self.live) :] + self.live[: number % len(self.live)] if self.live else []
        for live in order:
            self._guarded(live, partial(self._measure, live, number))

    def _measure(self, live: Live, number: int) -> None:
        print(f"  round {number + 1}/{self.options.rounds}: #{live.scenario.key} {live.scenario.title}", flush=True)
        seconds = self.options.seconds
        if live.scenario.kdf_reference:
            self.result.kdf_threads, rate = kdf.measure_pinned(min(seconds, 5))
            self.result.kdf_hashes_per_s.append(rate)
        before = live.server.cpu_snapshot()
        if live.side is None:
            sample = self.wrk.measure(live.load, seconds)
        else:
            sample, side = self.wrk.measure_beside(live.load, live.side, seconds)
            live.result.side.append(side)
        live.result.foreign_cpu.append(live.server.foreign_share(before))
        live.result.rounds.append(sample)
        live.result.rss_mib.append(live.server.rss_mib())

    def measure_fanout(self) -> None:
        """Each fan-out document once, each to a fresh gateway (scenario 2's settings): time to refusal."""
        scenario = next(s for s in SCENARIOS if s.key == "2")
        for levels in FANOUT_LEVELS:
            print(f"  fan-out n={levels}", flush=True)
            server, load = self.start(scenario, f"fanout-{levels}")
            try:
                self.result.fanout.append(fanout.time_refusal(load.url, levels, self.options.fanout_timeout))
            finally:
                server.stop(grace=2)

    def collect_logs(self) -> None:
        for live in self.live:
            live.result.log_problems = live.server.log_problems()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def measure(options: Options, scenarios: Sequence[Scenario]) -> RunResult:
    """Everything a run does between starting its first server and stopping its last."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-bench-")))
        bench = Bench(options, stack, workdir)
        bench.prepare({need for s in scenarios for need in s.needs})
        print(f"starting {len(scenarios)} server(s) …", flush=True)
        for scenario in scenarios:
            bench.launch(scenario)
        bench.warm_up()
        for number in range(options.rounds):
            bench.measure_round(number)
        bench.collect_logs()
        if "fanout" in options.groups:
            try:
                bench.measure_fanout()
            except BenchError as error:
                print(f"fan-out line not measured: {error}", file=sys.stderr)
        print("stopping servers …", flush=True)
        return bench.result


def _load_average() -> float:
    """The machine's 1-minute load average: other work beside the benchmark makes its numbers noisy."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def _git(*args: str) -> str:
    try:
        return run(["git", *args], timeout=30).strip()
    except BenchError:
        return ""


def _meta(options: Options, started: float, load_before: float) -> Meta:
    return Meta(
        commit=_git("rev-parse", "--short", "HEAD"),
        dirty=bool(_git("status", "--porcelain", "--untracked-files=no")),
        quick=options.quick,
        rounds=options.rounds,
        seconds_per_round=options.seconds,
        warmup_seconds=options.warmup,
        connections=options.connections,
        only=options.groups,
        python=sys.version.split()[0],
        proxy_transport=transport_name(),
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        duration_s=round(time.time() - started, 1),
        load_average=(load_before, _load_average()),
    )


def _report(options: Options, scenarios: Sequence[Scenario], result: RunResult, meta: Meta) -> None:
    print("\n" + report.text(scenarios, result, meta))
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(report.as_json(scenarios, result, meta), indent=2) + "\n")
    print(f"results: {options.output}")


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    scenarios = select(options.groups)
    signal.signal(signal.SIGTERM, _interrupt)
    started, load_before = time.time(), _load_average()
    try:
        result = measure(options, scenarios)
        _report(options, scenarios, result, _meta(options, started, load_before))
    except KeyboardInterrupt:
        print("\ninterrupted; every server the benchmark started has been stopped", file=sys.stderr)
        return 130
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    return 1 if any(r.status is Status.FAILED for r in result.scenarios.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
