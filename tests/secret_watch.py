"""A pytest plugin that watches the whole test run for leaked OTPs.

Every OTP the credential engine draws during the run is recorded (by wrapping
`gateway.engine.otp.new_otp`), every log record of the run is kept as formatted text (the
gateway's loggers at DEBUG, tracebacks included), and at the end no recorded OTP may appear in
those lines or in any SQLite file the tests left behind. A leak fails the run.

A test that runs a gateway in another process hands over what it saw: `watch(otp)` for the OTPs
it was given, `keep(lines)` for the log lines that process wrote.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.engine import otp

ISSUED: set[str] = set()
LINES: list[str] = []


def watch(otp: str) -> None:
    """An OTP drawn in another process (a `gateway serve` a test ran): watched like the run's own."""
    ISSUED.add(otp)


def keep(lines: list[str]) -> None:
    """Log lines written by another process: checked like the run's own."""
    LINES.extend(lines)


class _Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        LINES.append(self.format(record))


def pytest_configure(config: pytest.Config) -> None:
    draw = otp.new_otp

    def recording_new_otp() -> str:
        otp = draw()
        ISSUED.add(otp)
        return otp

    otp.new_otp = recording_new_otp
    handler = _Keep(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("gateway").setLevel(logging.DEBUG)


def _database_files(config: pytest.Config) -> list[Path]:
    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    return [path for path in Path(base).rglob("*.sqlite3*") if path.is_file()]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not ISSUED:
        return
    files = _database_files(session.config)
    text = "\n".join(LINES)
    leaks = [f"an OTP issued in the run is in the logs: {otp[:2]}…" for otp in ISSUED if otp in text]
    for path in files:
        data = path.read_bytes()
        leaks += [f"an OTP issued in the run is in {path.name}" for otp in ISSUED if otp.encode() in data]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    summary = f"secret watch: {len(ISSUED)} OTPs issued; checked {len(LINES)} log lines and {len(files)} database files"
    if reporter is not None:
        reporter.write_line(summary + ("" if not leaks else f": {len(leaks)} LEAKS"))
        for leak in leaks[:20]:
            reporter.write_line(f"  {leak}")
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
