"""The project's packages import from this checkout (PyPI has unrelated `envs` and `agents`)."""

import importlib
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ["retain", "envs", "agents", "pretrain", "finetune", "configs"]


@pytest.mark.parametrize("name", PACKAGES)
def test_package_imports_from_this_checkout(name):
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().is_relative_to(ROOT), f"{name} imported from {module.__file__}"


def test_pyproject_lists_every_package_explicitly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    on_disk = {
        str(p.parent.relative_to(ROOT)).replace("/", ".")
        for name in PACKAGES
        for p in (ROOT / name).rglob("__init__.py")
    }
    assert set(PACKAGES) <= listed and on_disk <= listed, f"not listed in pyproject.toml: {sorted(on_disk - listed)}"


def test_constraints_pin_the_cpu_torch():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
