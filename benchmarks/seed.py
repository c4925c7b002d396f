"""Seeding at scale: `gateway seed` of 100,000 subjects and 100,000 devices, into an empty store
and again (every row upserted), each timed. A benchmark line, not a test (issue target: the
re-seed under 20 s on the 2-core machine).

    .venv/bin/python -m benchmarks.seed [--count 100000] [--database-url URL --database-schema S]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = "5EED5EED5EED5EED5EED5EED5EED5EED"


def subject_id(index: int) -> str:
    return f"5E{index:030X}"


def registry(count: int, *, study: str = STUDY, name: str = "D") -> dict[str, object]:
    """`count` subjects of `study` (active mode), each with its ready device `{name}-{index}`."""
    return {
        "studies": [{"id": study, "modes": ["active"], "mhealthSettings": ["active"]}],
        "subjects": [
            {"id": subject_id(i), "studyId": study, "mode": "active", "mSubjectId": f"{name}-{i}"} for i in range(count)
        ],
        "devices": [
            {
                "inventoryId": f"{name}-{i}",
                "studyId": study,
                "mode": "active",
                "instanceId": f"{i:032X}",
                "connectionType": "DEVICE_TO_CLOUD",
                "vendorCode": None,
                "registered": True,
                "dispensedTo": subject_id(i),
            }
            for i in range(count)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="subjects, and as many devices")
    parser.add_argument("--database-url", default="", help="GATEWAY_DATABASE_URL (default: a SQLite file)")
    parser.add_argument("--database-schema", default="", help="GATEWAY_DATABASE_SCHEMA")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gateway-seed-") as folder:
        file = Path(folder) / "registry.json"
        file.write_text(json.dumps(registry(args.count)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(GATEWAY_ENV_FILE="", GATEWAY_DATA_DIR=str(Path(folder) / "data"))
        if args.database_url:
            env.update(GATEWAY_DATABASE_URL=args.database_url, GATEWAY_DATABASE_SCHEMA=args.database_schema)
        subprocess.run([sys.executable, "-m", "gateway", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
        for label in ("into an empty store", "again (every row upserted)"):
            started = time.perf_counter()
            command = [sys.executable, "-m", "gateway", "seed", str(file)]
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            print(
                f"seed of {args.count:,} subjects + {args.count:,} devices {label}: "
                f"{time.perf_counter() - started:.1f} s"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
