"""A pytest plugin that watches the whole test run for leaked OTPs and bearer tokens.

Every OTP the credential engine draws during the run is recorded (by wrapping
`gateway.engine.otp.new_otp`), and every token signed in the run (by wrapping PyJWT's
`jwt.encode`, which `gateway token` and the tests' token helpers use); every log record of the run
is kept as formatted text (the gateway's loggers at DEBUG, tracebacks included). At the end no
recorded OTP or token, and no `Authorization: Bearer` header, may appear in those lines, nor an
OTP or token in any SQLite file the tests left behind. A leak fails the run.

A test that runs a gateway in another process hands over what it saw: `watch(secret)` for the OTPs
(or tokens) it was given, `keep(lines)` for the log lines that process wrote.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.engine import otp

ISSUED: set[str] = set()
TOKENS: set[str] = set()
LINES: list[str] = []
AUTHORIZATION_HEADER = re.compile(r"authorization['\"]?\s*[:=,]\s*['\"]?bearer\s+[\w.~+/=-]{8,}", re.IGNORECASE)
"""An Authorization header with a credential in it (not a `Bearer <token>` placeholder of a hint)."""
_OTP_SHAPED = re.compile(f"(?=([{otp.ALPHABET}]{{{otp.OTP_LENGTH}}}))")
"""Every run of `OTP_LENGTH` alphabet symbols, overlapping: where an OTP could be."""


def _otps_in(text: str) -> set[str]:
    """The recorded OTPs that appear in `text`: one pass over it, whatever the number of OTPs (a run
    records thousands: the engine's reserve draws them ahead)."""
    return {match.group(1) for match in _OTP_SHAPED.finditer(text)} & ISSUED


def watch(secret: str) -> None:
    """An OTP (or a token) another process gave a test (a `gateway serve` it ran): watched like the
    run's own."""
    (TOKENS if secret.count(".") == 2 else ISSUED).add(secret)


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
    # Modules that imported `new_otp` by name before this plugin was configured (conftest imports the
    # app, and so the engine and its reserve, first) hold the original: they get the recording one too.
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("gateway.") and getattr(module, "new_otp", None) is draw:
            module.new_otp = recording_new_otp  # type: ignore[attr-defined]
    encode = jwt.encode

    def recording_encode(*args: Any, **kwargs: Any) -> str:
        token = encode(*args, **kwargs)
        TOKENS.add(token)
        return token

    jwt.encode = recording_encode
    handler = _Keep(level=logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("gateway").setLevel(logging.DEBUG)


def _database_files(config: pytest.Config) -> list[Path]:
    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    return [path for path in Path(base).rglob("*.sqlite3*") if path.is_file()]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not ISSUED and not TOKENS:
        return
    files = _database_files(session.config)
    text = "\n".join(LINES)
    leaks = [f"an OTP issued in the run is in the logs: {otp[:2]}…" for otp in _otps_in(text)]
    leaks += [f"a token signed in the run is in the logs: {token[:8]}…" for token in TOKENS if token in text]
    leaks += [f"an Authorization header is in the logs: {m.group()[:24]}…" for m in AUTHORIZATION_HEADER.finditer(text)]
    for path in files:
        data = path.read_bytes()
        leaks += [f"an OTP issued in the run is in {path.name}" for _ in _otps_in(data.decode("latin-1"))]
        leaks += [f"a token signed in the run is in {path.name}" for token in TOKENS if token.encode() in data]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    summary = (
        f"secret watch: {len(ISSUED)} OTPs issued, {len(TOKENS)} tokens signed; "
        f"checked {len(LINES)} log lines and {len(files)} database files"
    )
    if reporter is not None:
        reporter.write_line(summary + ("" if not leaks else f": {len(leaks)} LEAKS"))
        for leak in leaks[:20]:
            reporter.write_line(f"  {leak}")
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
