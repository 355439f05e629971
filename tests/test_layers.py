"""The package's layers (DESIGN.md's table) and the generic trainers, enforced by import-linter.

The contracts live in pyproject.toml; this test runs them, so the README's test command fails
on any import that reaches back up a layer, any import cycle between layers, or a trainer, the
ClientApp or the protocol importing an algorithm module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())"]


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([*LINT, "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True)


def test_the_package_keeps_its_import_contracts() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_reaching_up_import_breaks_the_contracts(tmp_path: Path) -> None:
    """The contracts are not vacuous: a copy of the package where the run-directory layer
    imports the server, and a trainer imports an algorithm, fails both."""
    shutil.copytree(ROOT / "fedwsa", tmp_path / "fedwsa",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "fedwsa" / "results" / "plots.py").open("a") as fh:
        fh.write("\nimport fedwsa.server.app  # noqa\n")
    with (tmp_path / "fedwsa" / "clients" / "sequential.py").open("a") as fh:
        fh.write("\nimport fedwsa.algorithms.fedprox  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "0 kept, 2 broken" in result.stdout, result.stdout
    assert "fedwsa.results.plots -> fedwsa.server.app" in result.stdout
    assert "fedwsa.clients.sequential -> fedwsa.algorithms.fedprox" in result.stdout
