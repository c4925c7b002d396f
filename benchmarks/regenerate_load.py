"""Load benchmark: regenerations per second, latency and the server's peak memory.

Starts `gateway serve` (local engine, production KDF cost, no rate limits) in its own process on
a free loopback port, seeds a registry of many ready devices, then sends a fixed number of
`regenerateAccessCode` mutations at a fixed concurrency, each to the next device in turn. Prints
one JSON report and, with `--check`, compares it with the targets in `baseline.json` beside this
file (exit 1 when a target is missed). Bounded in count and time; it stops the server by its pid.

    .venv/bin/python benchmarks/regenerate_load.py                       # SQLite file
    .venv/bin/python benchmarks/regenerate_load.py --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

STUDY = "BE0C4A1F2D3E4F5061728394A5B6C7D8"
SUBJECT_PREFIX = "5B"
MUTATION = """mutation($input: RegenerateAccessCodeInput!) {
  regenerateAccessCode(input: $input) { __typename ... on Error { code } }
}"""
BASELINE = Path(__file__).with_name("baseline.json")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def subject_id(index: int) -> str:
    return f"{SUBJECT_PREFIX}{index:030X}"


def registry(devices: int) -> dict[str, Any]:
    """A study with `devices` subjects, each with one ready device-to-cloud device."""
    return {
        "studies": [{"id": STUDY, "modes": ["active"], "mhealthSettings": ["active"]}],
        "subjects": [
            {"id": subject_id(i), "studyId": STUDY, "mode": "active", "mSubjectId": f"BENCH-{i}"}
            for i in range(devices)
        ],
        "devices": [
            {
                "inventoryId": f"BENCH-{i}",
                "studyId": STUDY,
                "mode": "active",
                "instanceId": f"{i:032X}",
                "connectionType": "DEVICE_TO_CLOUD",
                "vendorCode": None,
                "registered": True,
                "dispensedTo": subject_id(i),
            }
            for i in range(devices)
        ],
    }


def gateway(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(base: str, token: str, requests: int, concurrency: int, devices: int) -> list[float]:
    latencies: list[float] = []
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30) as client:

        async def worker() -> None:
            for n in counter:
                i = n % devices
                variables = {
                    "input": {
                        "studyId": STUDY,
                        "mode": "ACTIVE",
                        "subjectId": subject_id(i),
                        "inventoryId": f"BENCH-{i}",
                        "mSubjectId": f"BENCH-{i}",
                    }
                }
                started = time.perf_counter()
                response = await client.post("/graphql", json={"query": MUTATION, "variables": variables})
                latencies.append(time.perf_counter() - started)
                typename = response.json()["data"]["regenerateAccessCode"]["__typename"]
                if typename != "BootstrapCredentials":
                    raise RuntimeError(f"unexpected result {typename}")

        with anyio.fail_after(600):
            async with anyio.create_task_group() as tasks:
                for _ in range(concurrency):
                    tasks.start_soon(worker)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--kdf-cost", type=int, default=14, help="log2 scrypt N (default: the production 14)")
    parser.add_argument("--database-url", default="", help="default: a SQLite file in a temporary folder")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target in baseline.json is missed")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env |= {
            "GATEWAY_DATA_DIR": folder,
            "GATEWAY_ENV_FILE": "",
            "GATEWAY_KDF_COST": str(args.kdf_cost),
            "GATEWAY_RATE_LIMIT_DEVICE": "0",
            "GATEWAY_RATE_LIMIT_CALLER": "0",
            "GATEWAY_DEMO_DATA": "false",
            "GATEWAY_LOG_LEVEL": "warning",
        }
        if args.database_url:
            env["GATEWAY_DATABASE_URL"] = args.database_url
            env["GATEWAY_DATABASE_SCHEMA"] = f"bench_{os.getpid()}"
            _create_schema(args.database_url, env["GATEWAY_DATABASE_SCHEMA"], drop=False)
        registry_file = Path(folder) / "registry.json"
        registry_file.write_text(json.dumps(registry(args.devices)))
        gateway("seed", str(registry_file), env=env)
        token = gateway("token", "--study", "*", "--mode", "*", env=env)
        log = (Path(folder) / "server.log").open("w")
        server = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            started = time.perf_counter()
            latencies = anyio.run(load, base, token, args.requests, args.concurrency, args.devices)
            elapsed = time.perf_counter() - started
            rss = peak_rss_mib(server.pid)
        finally:
            os.kill(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
            log.close()
            if args.database_url:
                _create_schema(args.database_url, env["GATEWAY_DATABASE_SCHEMA"], drop=True)

    quantiles = statistics.quantiles(latencies, n=100)
    report = {
        "store": "postgresql" if args.database_url else "sqlite",
        "requests": args.requests,
        "concurrency": args.concurrency,
        "kdf_cost": args.kdf_cost,
        "throughput_per_s": round(args.requests / elapsed, 1),
        "p50_ms": round(quantiles[49] * 1000, 1),
        "p95_ms": round(quantiles[94] * 1000, 1),
        "p99_ms": round(quantiles[98] * 1000, 1),
        "server_peak_rss_mib": round(rss, 1),
    }
    print(json.dumps(report, indent=2))
    if not args.check:
        return 0
    targets = json.loads(BASELINE.read_text())["targets"]
    missed = [
        f"{name}: {report[name]} (target {bound} {limit})"
        for name, (bound, limit) in targets.items()
        if (bound == "max" and report[name] > limit) or (bound == "min" and report[name] < limit)
    ]
    for line in missed:
        print(f"MISSED {line}", file=sys.stderr)
    return 1 if missed else 0


def _create_schema(url: str, schema: str, *, drop: bool) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> None:
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            statement = f'DROP SCHEMA "{schema}" CASCADE' if drop else f'CREATE SCHEMA "{schema}"'
            await conn.execute(text(statement))
        await engine.dispose()

    anyio.run(run)


if __name__ == "__main__":
    raise SystemExit(main())
