"""`scripts/bench` end to end on its smallest subset: it starts, measures and reports. Nothing about speed.

wrk comes from Debian's packages (the script installs it when missing, which needs root); where it
cannot, the test is skipped on a developer's machine and fails in CI (CI=true).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_measures_the_baseline_and_the_refusal_path(tmp_path: Path) -> None:
    if not shutil.which("wrk") and os.geteuid() != 0:
        message = "wrk is not installed and this user cannot apt-get install it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    output = tmp_path / "bench.json"

    done = subprocess.run(
        [str(ROOT / "scripts" / "bench"), "--quick", "--only", "1,2", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(output.read_text())
    rows = {row["key"]: row for row in report["scenarios"]}
    assert set(rows) == {"1", "2"}
    for row in rows.values():
        assert row["status"] == "ok", row["reason"]
        assert row["bad"] == 0
        for number in ("rps", "p50_ms", "p99_ms", "rss_mib"):
            assert row[number] > 0, (row["key"], number)
    assert rows["2"]["ratio"] > 0
    assert rows["2"]["ratio_to"] == "#1"
    assert "req/s" in done.stdout
