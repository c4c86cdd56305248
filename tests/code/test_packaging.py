"""pyproject.toml, python_env.yaml and conda.yaml describe the same environment."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _runtime_with_spark() -> list[str]:
    """What every entry point needs: the dependencies and the ``spark`` extra (batch_score)."""
    project = _pyproject()["project"]
    return sorted(
        map(_normalise, [*project["dependencies"], *project["optional-dependencies"]["spark"]])
    )


def test_python_env_matches_pyproject() -> None:
    runtime = _runtime_with_spark()
    python_env = yaml.safe_load((ROOT / "python_env.yaml").read_text())
    assert sorted(map(_normalise, python_env["dependencies"])) == runtime
    assert str(python_env["python"]).startswith("3.11.")


def test_conda_env_matches_pyproject() -> None:
    runtime = _runtime_with_spark()
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip_block = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(map(_normalise, pip_block)) == runtime
    assert "python=3.11" in conda["dependencies"]


def test_pins_of_the_brief() -> None:
    dependencies = list(map(_normalise, _pyproject()["project"]["dependencies"]))
    assert "mlflow[auth]==3.17.2" in dependencies
    assert any(d.startswith("tensorflow==2.21") for d in dependencies)
    dev = list(map(_normalise, _pyproject()["project"]["optional-dependencies"]["dev"]))
    assert any(d.startswith("pytest") for d in dev)
    assert any(d.startswith("ruff") for d in dev)


def test_console_script_is_the_click_group() -> None:
    assert _pyproject()["project"]["scripts"]["eye-model"] == "eye_model.cli:main"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme
    assert re.search(r"^make test$", ci, re.MULTILINE)
