"""The KDF's own rate: scrypt hashes per second with the gateway's parameters, pinned to the server core.

    taskset -c 0 python -m benchmarks.kdf --seconds 5     # prints {"threads": ..., "hashes_per_s": ...}

Scenario 4 compares the gateway's successes per second with this rate measured on the same core
(`taskset -c 0`), with as many threads as the gateway's KDF pool would have there.
"""

from __future__ import annotations

import argparse
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
    """The gateway's KDF pool size as a gateway in this process would choose it: the default of
    `GATEWAY_KDF_WORKERS` when that setting exists (it may follow the CPU affinity, so call this
    in a process pinned like the server), else the CPU count."""
    from gateway.settings import Settings

    workers = getattr(Settings.from_env({"GATEWAY_ENV_FILE": ""}), "kdf_workers", None)
    if isinstance(workers, int) and workers > 0:
        return workers
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


def measure_pinned(seconds: float) -> tuple[int, float]:
    """(threads, hashes/s): `hashes_per_second` in a fresh process pinned to the server core, with
    the pool size a gateway pinned there would have."""
    argv = [sys.executable, "-m", "benchmarks.kdf", "--seconds", str(seconds)]
    measured = json.loads(run(pinned(SERVER_CPU, argv), timeout=seconds + 60))
    return int(measured["threads"]), float(measured["hashes_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, help="default: the gateway's KDF pool size in this process")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--cost", type=int, default=COST)
    args = parser.parse_args()
    threads = args.threads or pool_size()
    print(json.dumps({"threads": threads, "hashes_per_s": hashes_per_second(threads, args.seconds, args.cost)}))


if __name__ == "__main__":
    main()
