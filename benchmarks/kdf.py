"""The KDF's own rate: scrypt hashes per second with the gateway's parameters, pinned to the server core.

    python -m benchmarks.kdf --threads 2 --seconds 5     # prints {"hashes_per_s": ...}

Scenario 4 compares the gateway's successes per second with this rate measured on the same core
(`taskset -c 0`), with as many threads as the gateway's KDF pool.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.processes import SERVER_CPU, pinned, run

COST = 14
"""log2 of scrypt's N: the gateway's default `GATEWAY_KDF_COST`."""
R, P, DKLEN = 8, 1, 32


def pool_size() -> int:
    """The gateway's KDF pool size: `GATEWAY_KDF_WORKERS`'s default when that setting exists, else the CPU count."""
    from gateway.settings import Settings

    default = {f.name: f.default for f in dataclasses.fields(Settings)}.get("kdf_workers")
    if isinstance(default, int) and default > 0:
        return default
    return os.cpu_count() or 1


def hashes_per_second(threads: int, seconds: float, cost: int = COST) -> float:
    """How many scrypt hashes `threads` threads complete per second, hashing without pause for `seconds`."""
    n = 1 << cost
    started = time.perf_counter()
    deadline = started + seconds

    def hash_until_deadline() -> int:
        salt, done = os.urandom(16), 0
        while time.perf_counter() < deadline:
            hashlib.scrypt(b"TZ4W9RHC", salt=salt, n=n, r=R, p=P, maxmem=256 * n * R, dklen=DKLEN)
            done += 1
        return done

    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda _: hash_until_deadline(), range(threads)))
    return total / (time.perf_counter() - started)


def measure_pinned(threads: int, seconds: float) -> float:
    """`hashes_per_second` in a fresh process pinned to the server core."""
    argv = [sys.executable, "-m", "benchmarks.kdf", "--threads", str(threads), "--seconds", str(seconds)]
    rate: float = json.loads(run(pinned(SERVER_CPU, argv), timeout=seconds + 60))["hashes_per_s"]
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=pool_size())
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--cost", type=int, default=COST)
    args = parser.parse_args()
    print(json.dumps({"hashes_per_s": hashes_per_second(args.threads, args.seconds, args.cost)}))


if __name__ == "__main__":
    main()
