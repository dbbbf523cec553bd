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


def test_one_registry_names_every_command_with_its_schema_config_and_policy():
    from rtkrun.commands import COMMANDS
    from rtkrun.config import RUN_SCHEMAS
    from rtkrun.rundir import MAY_CHANGE

    assert set(COMMANDS) == set(RUN_SCHEMAS) == set(MAY_CHANGE)
    for name, command in COMMANDS.items():
        assert (ROOT / "conf" / f"{name}.yaml").is_file(), name
        assert command.schema is RUN_SCHEMAS[name] and callable(command.function), name


def test_the_command_line_help_needs_no_torch():
    """`rtkrun --help` answers from the registry: importing the CLI must not import torch."""
    import subprocess
    import sys

    probe = "import sys, rtkrun.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
