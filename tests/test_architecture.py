"""The layers of docs/architecture.md, enforced: the import-linter contracts in pyproject.toml
(layers, models independent of data, no cycles; imports inside functions count too)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_import_contracts_are_kept(capsys):
    cli = pytest.importorskip("importlinter.cli", reason="import-linter is a dev dependency")
    code = cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert code == 0, report
    assert "3 kept, 0 broken" in report
