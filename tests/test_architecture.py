"""The direction of imports, as `pyproject.toml`'s import-linter contracts draw it: faces ->
regeneration -> backends -> domain; nothing under `engine/` or `upstream/` imports a face."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def test_imports_run_one_way(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    assert os.path.exists("pyproject.toml")
    exit_code = lint_imports(no_cache=True)
    assert exit_code == 0, capsys.readouterr().out
