"""MLproject, click CLI and README stay in step: every parameter reaches its command."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
import pytest
import yaml

from eye_model.cli import main

ROOT = Path(__file__).resolve().parents[2]
MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())
ENTRY_POINTS = MLPROJECT["entry_points"]
PREFIX = ["python", "-m", "eye_model.cli"]


def _command_of(entry: str) -> click.Command:
    name = shlex.split(ENTRY_POINTS[entry]["command"])[3]
    command = main.get_command(click.Context(main), name)
    assert command is not None, f"{entry} calls unknown command {name!r}"
    return command


def _sentinel(entry: str, name: str, spec: dict[str, object]) -> str:
    """A value unique to this parameter that the command's parser accepts."""
    default = spec.get("default")
    option = next((p for p in _command_of(entry).params if p.name == name), None)
    if option is not None and isinstance(option.type, click.Choice):
        return next(c for c in option.type.choices if c != default)
    if spec.get("type") == "float":
        base = 7 if not isinstance(default, float) or float(default).is_integer() else 0.37
        return str(base + 1000 + sum(map(ord, name)) % 97)
    if isinstance(default, str) and default.lower() in ("true", "false"):
        return "false" if default.lower() == "true" else "true"
    return f"sentinel-{name}"


def _parse(entry: str, values: dict[str, str]) -> tuple[click.Command, dict[str, object]]:
    spec = ENTRY_POINTS[entry]
    rendered = spec["command"].format(**{k: shlex.quote(v) for k, v in values.items()})
    argv = shlex.split(rendered)
    assert argv[:3] == PREFIX, f"{entry} must call the eye-model CLI, not {argv[:3]}"
    command = main.get_command(click.Context(main), argv[3])
    assert command is not None, f"{entry} calls unknown command {argv[3]!r}"
    ctx = command.make_context(argv[3], argv[4:])
    return command, ctx.params


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_parameter_reaches_its_command(entry: str) -> None:
    params = ENTRY_POINTS[entry].get("parameters", {})
    values = {name: _sentinel(entry, name, spec) for name, spec in params.items()}
    command, parsed = _parse(entry, values)
    for name, value in values.items():
        assert name in parsed, f"{entry}: parameter {name} does not reach `{command.name}`"
        got = parsed[name]
        if isinstance(got, bool):
            assert got == (value == "true"), f"{entry}: {name}"
        elif isinstance(got, (int, float)):
            assert float(got) == float(value), f"{entry}: {name}={got!r}, sent {value!r}"
        else:
            assert str(got) == value, f"{entry}: {name}={got!r}, sent {value!r}"


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_defaults_parse_and_empty_strings_survive(entry: str) -> None:
    params = ENTRY_POINTS[entry].get("parameters", {})
    values = {name: str(spec.get("default", "")) for name, spec in params.items()}
    _, parsed = _parse(entry, values)
    for name, spec in params.items():
        if spec.get("default") == "":
            assert parsed[name] in ("", None), f"{entry}: empty {name} became {parsed[name]!r}"


def test_entry_points_of_the_contract_exist() -> None:
    expected = {
        "main",
        "train",
        "synthesize",
        "register",
        "promote",
        "probe",
        "drift",
        "batch_score",
    }
    assert expected <= set(ENTRY_POINTS)
    train = set(ENTRY_POINTS["train"]["parameters"])
    # The contract's parameters; more may be added (the contract says "add freely").
    assert train >= {
        "data_dir",
        "synthetic_per_class",
        "image_size",
        "backbone",
        "weights",
        "epochs",
        "batch_size",
        "learning_rate",
        "seed",
        "register_as",
        "folds",
        "epochs_frozen",
        "fine_tune_layers",
        "fine_tune_learning_rate",
        "augment",
    }
    assert ENTRY_POINTS["main"] == ENTRY_POINTS["train"]
    assert set(ENTRY_POINTS["batch_score"]["parameters"]) >= {
        "input",
        "output",
        "model_uri",
        "master",
    }
    assert set(ENTRY_POINTS["drift"]["parameters"]) >= {
        "model_uri",
        "window",
        "since",
        "fail_on_drift",
        "alert_url",
    }
    assert {"model_name", "version", "stage", "force", "eval_data_dir"} <= set(
        ENTRY_POINTS["promote"]["parameters"]
    )


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_cli_option_is_an_mlproject_parameter(entry: str) -> None:
    """A user of `mlflow run` can set everything a user of the CLI can."""
    command = _command_of(entry)
    options = {p.name for p in command.params if isinstance(p, click.Option)} - {"help"}
    missing = options - set(ENTRY_POINTS[entry].get("parameters", {}))
    assert not missing, f"{entry}: CLI options without an MLproject parameter: {sorted(missing)}"


@pytest.mark.parametrize("entry", ["train", "tune"])
def test_cli_defaults_match_mlproject_defaults(entry: str) -> None:
    """A user gets the same model from `eye-model train` as from `mlflow run . -e train`."""
    command = main.get_command(click.Context(main), entry)
    cli_defaults = {p.name: p.default for p in command.params}
    for name, spec in ENTRY_POINTS[entry]["parameters"].items():
        default = spec["default"]
        if isinstance(default, (int, float)):
            assert float(cli_defaults[name]) == float(default), name
        else:
            assert str(cli_defaults[name]) == str(default), name


def test_readme_names_every_entry_point() -> None:
    readme = (ROOT / "README.md").read_text()
    for entry in ENTRY_POINTS:
        if entry != "main":
            assert f"-e {entry}" in readme, f"README does not show `mlflow run . -e {entry}`"
