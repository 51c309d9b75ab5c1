"""pyproject.toml and environment.yml declare the same dependencies."""

from __future__ import annotations

import re
import tomllib

import yaml

from qtbench.config import REPO_ROOT


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_matches_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_reqs = {r for r in pip if not r.startswith("-e")}
    assert {_name(r): r for r in conda_reqs} == {_name(r): r for r in project["dependencies"]}


def test_console_script_declared():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["qtbench"] == "qtbench.cli:main"
    assert {"test", "gpu"} <= set(project["optional-dependencies"])
