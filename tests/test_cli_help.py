"""Help that teaches: every sub-command describes itself, `serve --help` says where the settings are
documented, and `gateway settings` shows each variable's effective value (secrets masked) and its source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import MASK, main
from gateway.settings import ENV_FILE, VARIABLES

COMMANDS = [
    ["serve"],
    ["migrate"],
    ["seed"],
    ["audit"],
    ["audit", "verify"],
    ["audit", "head"],
    ["audit", "export"],
    ["token"],
    ["export-schema"],
    ["settings"],
]
HS256_SECRET = "s3cret-of-the-environment-0123456789abcdef"
CLIENT_SECRET = "client-secret-from-the-env-file-42"


def help_text(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_sub_command_has_a_description(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    text = help_text(capsys, *command)
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith(f"usage: gateway {' '.join(command)}")
    description = rest.split("\n\n")[0]
    assert not description.startswith(("positional arguments:", "options:")), text
    assert len(description.split()) >= 8, description


def test_the_top_level_help_lists_the_settings_command(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys)
    assert "effective settings" in text


def test_serve_help_names_where_the_settings_are_documented(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_text(capsys, "serve").split())
    assert "GATEWAY_*" in text
    assert "README's Settings section" in text
    assert "gateway settings" in text


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One variable (and a secret) in the environment, one (and a secret) in a `.env` file, the rest unset."""
    for name in [*VARIABLES, ENV_FILE]:
        monkeypatch.delenv(name, raising=False)
    env_file = tmp_path / "gateway.env"
    env_file.write_text(
        f"GATEWAY_PORT=9123\nGATEWAY_UPSTREAM_CLIENT_SECRET={CLIENT_SECRET}\n"
        "GATEWAY_KDF_COST=9\n",  # also in the environment, which wins
        encoding="utf-8",
    )
    monkeypatch.setenv(ENV_FILE, str(env_file))
    monkeypatch.setenv("GATEWAY_KDF_COST", "6")
    monkeypatch.setenv("GATEWAY_AUTH_HS256_SECRET", HS256_SECRET)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "postgresql+asyncpg://gateway:db-password-77@db.example:5432/gw")
    return env_file


def test_settings_shows_each_value_and_where_it_came_from(capsys: pytest.CaptureFixture[str], sources: Path) -> None:
    assert main(["settings"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = {line.split(" = ")[0].strip(): line for line in out.splitlines()}
    assert set(lines) == {*VARIABLES, ENV_FILE}
    assert lines["GATEWAY_KDF_COST"].split() == ["GATEWAY_KDF_COST", "=", "6", "(environment)"]
    assert lines["GATEWAY_PORT"].split() == ["GATEWAY_PORT", "=", "9123", "(env", "file", f"{sources})"]
    assert lines["GATEWAY_HOST"].split() == ["GATEWAY_HOST", "=", "127.0.0.1", "(default)"]
    assert lines["GATEWAY_AUTH_ISSUER"].endswith("(default)")
    assert lines["GATEWAY_AUTH_HS256_SECRET"].split() == ["GATEWAY_AUTH_HS256_SECRET", "=", MASK, "(environment)"]
    assert lines["GATEWAY_UPSTREAM_CLIENT_SECRET"].split()[2] == MASK
    assert lines["GATEWAY_UPSTREAM_CLIENT_SECRET"].endswith(f"(env file {sources})")
    assert f"gateway:{MASK}@db.example" in lines["GATEWAY_DATABASE_URL"]
    for secret in (HS256_SECRET, CLIENT_SECRET, "db-password-77"):
        assert secret not in out
    defaults = [name for name in VARIABLES if lines[name].endswith("(default)")]
    assert len(defaults) == len(VARIABLES) - 5
    assert len({line.index(" = ") for line in lines.values()}) == 1  # aligned
    assert len({line.rindex("  (") for line in lines.values()}) == 1


def test_settings_as_json(capsys: pytest.CaptureFixture[str], sources: Path) -> None:
    assert main(["settings", "--json"]) == 0
    out = capsys.readouterr().out
    shown = {row["name"]: row for row in json.loads(out)["settings"]}
    assert list(shown) == [*VARIABLES, ENV_FILE]
    assert shown["GATEWAY_KDF_COST"] == {"name": "GATEWAY_KDF_COST", "value": "6", "source": "environment"}
    assert shown["GATEWAY_PORT"]["source"] == f"env file {sources}"
    assert shown["GATEWAY_DEMO_DATA"] == {"name": "GATEWAY_DEMO_DATA", "value": "true", "source": "default"}
    assert shown["GATEWAY_AUTH_HS256_SECRET"]["value"] == MASK
    assert shown["GATEWAY_UPSTREAM_CLIENT_SECRET"]["value"] == MASK
    for secret in (HS256_SECRET, CLIENT_SECRET, "db-password-77"):
        assert secret not in out


def test_settings_refuses_a_bad_value_in_one_line(
    capsys: pytest.CaptureFixture[str], sources: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "eighty")
    assert main(["settings"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "gateway settings: GATEWAY_PORT must be a whole number, not 'eighty'\n"
