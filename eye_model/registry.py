"""Model Registry: register versions, promote them through stages with a quality gate,
roll back, export, and resolve which model to serve (registry first, local copy second).

Stages (None → Staging → Production → Archived) are deprecated in MLflow but still
work in 3.17 and are what the users asked for; the aliases ``champion``
(Production) and ``challenger`` (Staging) are kept in step with them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from eye_model.config import ALIASES
from eye_model.settings import Settings, env_name, load_settings, temporary_environ
from eye_model.uris import redact_uri

logger = logging.getLogger(__name__)

#: Stages a version can be moved to.
STAGES: tuple[str, ...] = ("Staging", "Production", "Archived")
#: Alias kept on the Production version.
CHAMPION = ALIASES[0]
#: Alias kept on the newest Staging version.
CHALLENGER = ALIASES[1]
#: Largest drop of macro-F1 against Production that the gate lets through.
DEFAULT_TOLERANCE = 0.01
#: Seed and size of the synthetic evaluation set used when no eval_data_dir is given.
GATE_SYNTHETIC_SEED = 20240601
GATE_SYNTHETIC_PER_CLASS = 40


class RegistryError(RuntimeError):
    """A registry action that cannot be done; the message names the problem and the fix."""


class PromotionRefused(RegistryError):
    """The quality gate refused a promotion to Production."""


@contextlib.contextmanager
def quiet_stage_deprecation() -> Iterator[None]:
    """Hide MLflow's FutureWarning about stages: using them is the users' explicit choice."""
    with warnings.catch_warnings():
        # MLflow warns with the caller's module, so filter by category and message.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*deprecated.*")
        yield


def _client() -> MlflowClient:
    return MlflowClient()


def check_model_uri(model_uri: str) -> str:
    """A URI of a logged model (``runs:/<run_id>/<path>`` or ``models:/m-<id>``), or an error."""
    text = (model_uri or "").strip()
    if text.startswith("runs:/"):
        parts = text[len("runs:/") :].split("/", 1)
        if len(parts) == 2 and parts[0] and parts[1]:
            return text
    elif text.startswith("models:/m-") and len(text) > len("models:/m-"):
        return text
    raise RegistryError(
        f"model URI {model_uri!r} is not a logged model; use runs:/<run_id>/model "
        "(the train run prints it) or models:/m-<model_id>"
    )


def _run_id_of(model_uri: str, client: MlflowClient) -> str | None:
    if model_uri.startswith("runs:/"):
        return model_uri.split("/")[1]
    if model_uri.startswith("models:/m-"):
        model_id = model_uri[len("models:/") :].split("/")[0]
        return client.get_logged_model(model_id).source_run_id
    return None


def _get_run(run_id: str, client: MlflowClient) -> Any:
    """The run, or a RegistryError naming the id and where it was looked for."""
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        server = redact_uri(client.tracking_uri)
        raise RegistryError(
            f"run {run_id} does not exist on the tracking server {server}; "
            "check the run id (the train run prints it) and MLFLOW_TRACKING_URI"
        ) from None


def _git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
            timeout=5,
        )
        return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_model_name(name: str) -> str:
    """A registered model name as MLflow accepts it, or a RegistryError that says why.

    Names are free text (quotes, ``%``, spaces and unicode are fine) but cannot be empty
    or contain ``/`` or ``:`` (MLflow refuses them), nor control characters.
    """
    text = (name or "").strip()
    if not text:
        raise RegistryError("the model name is empty; pass --model-name or set MLFLOW_MODEL_NAME")
    bad = [c for c in ("/", ":") if c in text] + (
        ["a control character"] if any(ord(c) < 32 for c in text) else []
    )
    if bad:
        raise RegistryError(
            f"model name {name!r} cannot contain {' or '.join(bad)}; "
            "use letters, digits, spaces, '-', '_' or '.'"
        )
    return text


def name_filter(name: str) -> str:
    """A registry search filter matching exactly ``name``, whatever quotes it holds.

    MLflow's filter parser takes a string in single or double quotes and has no escape:
    the quote the name does not contain is used.
    """
    if "'" not in name:
        return f"name = '{name}'"
    if '"' not in name:
        return f'name = "{name}"'
    raise RegistryError(
        f"model name {name!r} holds both kinds of quotes, which MLflow's search cannot "
        "match; register the model under a name without one of them"
    )


def _versions(name: str, client: MlflowClient) -> list[ModelVersion]:
    """Every version of a registered model, oldest first ([] when the model does not exist).

    Any other failure (the server is down, a wrong password, no permission) is raised.
    """
    try:
        versions = client.search_model_versions(name_filter(name))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return sorted(versions, key=lambda v: int(v.version))


def register_model(
    model_uri: str, model_name: str = "", *, client: MlflowClient | None = None
) -> ModelVersion:
    """Register a logged model as a new version, with its provenance in tags.

    Args:
        model_uri: ``runs:/<run_id>/model`` (or ``models:/m-<id>``).
        model_name: registered model name; empty → ``MLFLOW_MODEL_NAME`` or eye-disease-model.
        client: an MLflow client (default: one for the current tracking URI).

    Returns:
        The new version.

    Raises:
        RegistryError: when this run is already registered under this name.
    """
    client = client or _client()
    model_name = check_model_name(model_name or load_settings().model_name)
    check_model_uri(model_uri)
    run_id = _run_id_of(model_uri, client)
    run = _get_run(run_id, client) if run_id else None
    for version in _versions(model_name, client):
        if run_id and version.tags.get("source_run_id") == run_id:
            raise RegistryError(
                f"run {run_id} is already registered as version {version.version} of "
                f"{model_name!r}; promote that version, or train a new model to register"
            )
    tags: dict[str, str] = {"source_run_id": run_id or "", "git_commit": _git_commit()}
    description = [f"eye-model classifier from `{model_uri}`."]
    if run is not None:
        metrics = run.data.metrics
        for key in ("test_accuracy", "test_macro_f1", "test_ece"):
            if key in metrics:
                tags[key] = f"{metrics[key]:.4f}"
        tags["data_source"] = run.data.tags.get("data.source", "unknown")
        data = {k[len("data.") :]: v for k, v in run.data.params.items() if k.startswith("data.")}
        tags["data"] = json.dumps(data, sort_keys=True)
        tags["backbone"] = run.data.tags.get("backbone", "")
        tags["git_commit"] = run.data.tags.get("mlflow.source.git.commit") or tags["git_commit"]
        description.append(
            "Test metrics: "
            + ", ".join(
                f"{k} {tags[k]}"
                for k in ("test_accuracy", "test_macro_f1", "test_ece")
                if k in tags
            )
            + f". Data: {tags['data_source']} ({tags['data']}). Commit {tags['git_commit'][:12]}."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        version = mlflow.register_model(model_uri, model_name, tags=tags)
    client.update_model_version(model_name, version.version, description=" ".join(description))
    logger.info("registered %s as version %s of %s", model_uri, version.version, model_name)
    return client.get_model_version(model_name, str(version.version))


def parse_version(version: str | int | None) -> str | None:
    """Read a version as users write it: a positive whole number, or ``latest`` (None).

    Raises:
        RegistryError: anything else (``1.5``, ``abc``, ``0``), naming the value and the fix.
    """
    text = str(version if version is not None else "").strip()
    if text.lower() in ("", "latest"):
        return None
    if not text.isdigit() or int(text) <= 0:
        raise RegistryError(
            f"version {version!r} is not a version; use a positive whole number such as 3, "
            "or latest"
        )
    return str(int(text))


def resolve_version(model_name: str, version: str, client: MlflowClient | None = None) -> str:
    """Turn ``latest`` (the newest version number) or a number into an existing version number."""
    client = client or _client()
    wanted = parse_version(version)
    versions = _versions(model_name, client)
    if not versions:
        raise RegistryError(
            f"registered model {model_name!r} has no versions; register one with "
            "`mlflow run . -e register -P model_uri=runs:/<run_id>/model`"
        )
    if wanted is None:
        return str(versions[-1].version)
    if wanted not in {str(v.version) for v in versions}:
        raise RegistryError(
            f"{model_name!r} has no version {wanted}; "
            f"it has {', '.join(str(v.version) for v in versions)}"
        )
    return wanted


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a registered model, pinned by number."""

    name: str
    version: str

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``: the URI that keeps meaning this version."""
        return f"models:/{self.name}/{self.version}"


def find_registered_version(
    model_uri: str, client: MlflowClient | None = None
) -> RegisteredVersion | None:
    """Pin a registry URI to a version number: the one model-URI resolver of eye-model.

    ``models:/<name>/<number>``, ``models:/<name>/latest`` (the newest version number, as
    :func:`resolve_version`), ``models:/<name>/<stage>`` (the newest version in the stage)
    and ``models:/<name>@<alias>`` are resolved; anything else (``runs:/``, a folder,
    ``models:/m-<id>``) is not a registry URI and gives None.

    Raises:
        RegistryError: the name, stage or alias has no version.
        MlflowException: the registry cannot be reached or refuses.
    """
    if not model_uri.startswith("models:/") or model_uri.startswith("models:/m-"):
        return None
    spec = model_uri[len("models:/") :].strip("/")
    client = client or _client()
    with quiet_stage_deprecation():
        if "@" in spec:
            name, alias = spec.split("@", 1)
            found_by_alias = client.get_model_version_by_alias(name, alias)
            return RegisteredVersion(name, str(found_by_alias.version))
        if "/" not in spec:
            raise RegistryError(
                f"model URI {model_uri!r} names no version; use models:/<name>/<version or "
                "stage> or models:/<name>@<alias>"
            )
        name, ref = spec.rsplit("/", 1)
        if ref.lower() == "latest" or ref.isdigit():
            return RegisteredVersion(name, resolve_version(name, ref, client))
        stage = _normalise_stage(ref)
        found = client.get_latest_versions(name, stages=[stage])
        if not found:
            raise RegistryError(f"{name!r} has no version in stage {stage}")
        return RegisteredVersion(name, str(found[0].version))


def _normalise_stage(stage: str) -> str:
    for known in STAGES:
        if stage.strip().lower() == known.lower():
            return known
    raise RegistryError(f"stage {stage!r} is unknown; use one of {', '.join(STAGES)}")


def sync_aliases(model_name: str, client: MlflowClient | None = None) -> dict[str, str | None]:
    """Point ``champion`` at the Production version and ``challenger`` at the newest Staging one.

    Returns:
        The alias → version mapping after the sync (None: the alias was removed).
    """
    client = client or _client()
    versions = _versions(model_name, client)
    result: dict[str, str | None] = {}
    for alias, stage in ((CHAMPION, "Production"), (CHALLENGER, "Staging")):
        holders = [str(v.version) for v in versions if v.current_stage == stage]
        if holders:
            client.set_registered_model_alias(model_name, alias, holders[-1])
            result[alias] = holders[-1]
        else:
            with contextlib.suppress(MlflowException):
                client.delete_registered_model_alias(model_name, alias)
            result[alias] = None
    return result


def _gate_data_dir(eval_data_dir: str, cache_dir: Path) -> Path:
    """The gate's data: ``eval_data_dir``, else the fixed-seed synthetic set in ``cache_dir``."""
    if eval_data_dir.strip():
        return Path(eval_data_dir).expanduser()
    from eye_model.data import prepare_synthetic_data

    return prepare_synthetic_data(GATE_SYNTHETIC_PER_CLASS, 224, GATE_SYNTHETIC_SEED, cache_dir)


@dataclass
class PromotionResult:
    """What a promotion did."""

    model_name: str
    version: str
    stage: str
    decision: str
    candidate_macro_f1: float | None = None
    production_macro_f1: float | None = None
    previous_production: str | None = None
    aliases: dict[str, str | None] | None = None


def promote(
    model_name: str,
    version: str,
    stage: str,
    *,
    force: bool = False,
    eval_data_dir: str = "",
    tolerance: float = DEFAULT_TOLERANCE,
    evidence: str = "",
    client: MlflowClient | None = None,
) -> PromotionResult:
    """Move a version to a stage; Production goes through the quality gate.

    Moving to Production archives the previous Production version. The gate
    evaluates the candidate and the current Production version on the same data
    and refuses when the candidate's macro-F1 is lower by more than ``tolerance``,
    unless ``force``. The decision and both figures become tags of the version.

    Args:
        model_name: registered model name; empty → ``MLFLOW_MODEL_NAME`` or eye-disease-model.
        version: a version number or ``latest``.
        stage: ``Staging``, ``Production`` or ``Archived``.
        force: promote even when the gate refuses.
        eval_data_dir: ImageFolder set for the gate; empty → a fixed-seed synthetic set.
        tolerance: the largest macro-F1 drop allowed.
        evidence: a ``role=comparison`` run of this version shadowing Production; the
            gate also refuses when its accuracy is below Production's by more than
            ``tolerance`` (:func:`eye_model.comparison.evidence_verdict`).
        client: an MLflow client.

    Returns:
        What was done.

    Raises:
        PromotionRefused: when the gate refuses and ``force`` is not set.
    """
    from eye_model.evaluate import evaluate_model_on_folder

    client = client or _client()
    model_name = check_model_name(model_name or load_settings().model_name)
    stage = _normalise_stage(stage)
    version = resolve_version(model_name, version, client)
    result = PromotionResult(model_name, version, stage, decision="moved")
    with quiet_stage_deprecation():
        current = [v for v in _versions(model_name, client) if v.current_stage == "Production"]
        previous = str(current[-1].version) if current else None
        if stage == "Production" and previous and previous != version:
            data_dir = _gate_data_dir(eval_data_dir, load_settings().cache_dir)
            candidate = evaluate_model_on_folder(f"models:/{model_name}/{version}", data_dir)
            incumbent = evaluate_model_on_folder(f"models:/{model_name}/{previous}", data_dir)
            result.candidate_macro_f1 = candidate["macro_f1"]
            result.production_macro_f1 = incumbent["macro_f1"]
            worse = result.candidate_macro_f1 < result.production_macro_f1 - tolerance
            evidence_tags = _evidence(client, evidence, model_name, version, previous, tolerance)
            worse = worse or evidence_tags.pop("passed", "true") != "true"
            result.decision = "forced" if worse and force else "refused" if worse else "accepted"
            gate_tags = {
                **evidence_tags,
                "gate.decision": result.decision,
                "gate.candidate_macro_f1": f"{result.candidate_macro_f1:.4f}",
                "gate.production_macro_f1": f"{result.production_macro_f1:.4f}",
                "gate.production_version": previous,
                "gate.tolerance": str(tolerance),
                "gate.eval_data": "synthetic" if not eval_data_dir.strip() else "folder",
                "gate.eval_images": str(int(candidate["n"])),
                "gate.candidate_failed_rows": str(int(candidate["errors"])),
                "gate.production_failed_rows": str(int(incumbent["errors"])),
            }
            for key, value in gate_tags.items():
                client.set_model_version_tag(model_name, version, key, value)
            if result.decision == "refused":
                measure, mine, theirs = (
                    ("macro-F1", result.candidate_macro_f1, result.production_macro_f1)
                    if result.candidate_macro_f1 < result.production_macro_f1 - tolerance
                    else (
                        f"shadow {gate_tags['gate.evidence_measure']}",
                        float(gate_tags["gate.evidence_challenger"]),
                        float(gate_tags["gate.evidence_champion"]),
                    )
                )
                raise PromotionRefused(
                    f"promotion of {model_name} version {version} to Production refused: its "
                    f"{measure} {mine:.4f} is below Production version {previous}'s "
                    f"{theirs:.4f} by more than {tolerance}; "
                    "fix the model, or pass force=true to promote it anyway"
                )
        if stage == "Production":
            result.previous_production = previous if previous != version else None
            if result.previous_production:
                client.set_model_version_tag(
                    model_name, version, "previous_production_version", result.previous_production
                )
            client.set_model_version_tag(model_name, version, "was_production", "true")
        client.transition_model_version_stage(
            model_name, version, stage, archive_existing_versions=stage == "Production"
        )
    result.aliases = sync_aliases(model_name, client)
    logger.info("%s version %s is now in %s (%s)", model_name, version, stage, result.decision)
    return result


def _evidence(
    client: MlflowClient, run_id: str, name: str, version: str, production: str, tolerance: float
) -> dict[str, str]:
    """The gate tags of a comparison run (with ``passed``), or {} without one."""
    if not run_id.strip():
        return {}
    from eye_model.comparison import evidence_verdict

    try:
        passed, tags = evidence_verdict(
            client,
            run_id.strip(),
            model_name=name,
            version=version,
            production=production,
            tolerance=tolerance,
        )
    except (ValueError, MlflowException) as exc:
        raise RegistryError(f"evidence {run_id}: {str(exc).splitlines()[0]}") from None
    return {**tags, "passed": str(passed).lower()}


def rollback(model_name: str = "", *, client: MlflowClient | None = None) -> PromotionResult:
    """Return the previous Production version to Production (the current one is archived)."""
    client = client or _client()
    model_name = check_model_name(model_name or load_settings().model_name)
    with quiet_stage_deprecation():
        versions = _versions(model_name, client)
    current = [v for v in versions if v.current_stage == "Production"]
    if not current:
        raise RegistryError(f"{model_name!r} has no Production version to roll back from")
    previous = current[-1].tags.get("previous_production_version")
    if not previous:
        raise RegistryError(
            f"{model_name} version {current[-1].version} has no previous Production version; "
            "promote another version instead"
        )
    result = promote(model_name, previous, "Production", force=True, client=client)
    client.set_model_version_tag(model_name, previous, "gate.decision", "rollback")
    result.decision = "rollback"
    return result


def export_model(model_uri: str, destination: str | Path) -> Path:
    """Download a model (for example ``models:/eye-disease-model/Production``) into a folder.

    The folder is replaced whole, so a fallback never serves half a model.
    """
    destination = Path(destination).expanduser().resolve()
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=".export-") as tmp:
        staged = Path(tmp) / "model"
        staged.mkdir()
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(staged)))
        if not (local / "MLmodel").is_file():
            raise RegistryError(f"{model_uri} is not an MLflow model (no MLmodel file)")
        (local / "eye_model_source.json").write_text(json.dumps({"model_uri": model_uri}))
        if destination.exists():
            shutil.rmtree(destination)
        local.rename(destination)
    return destination


@dataclass
class ResolvedModel:
    """Which model to serve and why."""

    uri: str
    source: str  # "registry", "local" or "explicit"
    reason: str
    name: str = ""
    version: str = ""


@contextlib.contextmanager
def _fast_failing_client() -> Iterator[None]:
    """No retries and a short timeout, so an unreachable registry is noticed in seconds."""
    with temporary_environ(
        {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    ):
        yield


def registry_uri_for(settings: Settings, alias: str = "") -> str:
    """The ``models:/`` URI the settings ask for: alias, else a version, else a stage."""
    alias = alias or settings.model_alias
    if alias:
        return f"models:/{settings.model_name}@{alias}"
    if settings.model_version and settings.model_version.lower() != "latest":
        return f"models:/{settings.model_name}/{settings.model_version}"
    return f"models:/{settings.model_name}/{settings.model_stage}"


def resolve_serving_model(
    settings: Settings | None = None, *, alias: str = "", model_uri: str = ""
) -> ResolvedModel:
    """Decide what to serve: an explicit URI, else the registry, else the local copy.

    Args:
        settings: the settings (default: read from the environment).
        alias: serve ``models:/<name>@<alias>`` (overrides stage and version).
        model_uri: an explicit URI; when given it is served as is.

    Returns:
        The model to serve, where it comes from and why.

    Raises:
        RegistryError: when neither the registry nor the local folder has a model.
    """
    settings = settings or load_settings()
    if model_uri:
        return ResolvedModel(model_uri, "explicit", "the model URI was given")
    local = settings.local_model
    local_ok = bool(local) and (Path(local).expanduser() / "MLmodel").is_file()
    if not settings.enable_registry:
        if local_ok:
            return ResolvedModel(local, "local", "ENABLE_MODEL_REGISTRY is false")
        raise RegistryError(
            "no model to serve: pass --model-uri, or set ENABLE_MODEL_REGISTRY=true, or set "
            f"{env_name('local_model')} to a model folder (eye-model export-model writes one)"
        )
    uri = registry_uri_for(settings, alias)
    try:
        with _fast_failing_client(), quiet_stage_deprecation():
            client = MlflowClient(
                tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri
            )
            found = find_registered_version(uri, client)
        assert found is not None  # registry_uri_for always gives a models:/ URI
        return ResolvedModel(
            found.uri,
            "registry",
            f"{uri} is version {found.version}",
            name=found.name,
            version=found.version,
        )
    except (MlflowException, RegistryError, OSError) as exc:
        why = str(exc).splitlines()[0][:300]
        if local_ok:
            logger.warning(
                "registry model %s could not be loaded (%s); serving the local copy %s instead",
                uri,
                why,
                local,
            )
            return ResolvedModel(local, "local", f"registry failed for {uri}: {why}")
        raise RegistryError(
            f"cannot serve {uri}: {why}; and no local fallback ({env_name('local_model')}="
            f"{local or 'unset'}). Start the tracking server, or export a model with "
            f"`eye-model export-model` and set {env_name('local_model')}"
        ) from None
