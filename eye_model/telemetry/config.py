"""Telemetry's settings, and whether this process tracks predictions at all."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from eye_model.settings import Settings, load_settings


@dataclass(frozen=True)
class TelemetryConfig:
    """Telemetry's part of :class:`eye_model.settings.Settings` (see :meth:`from_settings`).

    Each attribute comes from the setting named beside it (its environment variable is
    listed in :data:`eye_model.settings.ENVIRONMENT`).

    Attributes:
        enabled: ``enable_tracking`` (default true).
        mode: ``telemetry_mode``: ``serving`` (default: only inside a scoring server),
            ``always`` (also in-process, e.g. batch scoring) or ``never``.
        tracking_uri: where runs go (``tracking_uri``; empty: MLflow's own default).
        experiment_name: ``experiment_name``.
        log_dir: local root of inference logs (``telemetry_dir``).
        part_records: seal the local file after this many records.
        part_seconds: ... or after this many seconds.
        ship_interval: seconds between delivery attempts.
        session_every_n: log session/window metrics every N predictions ...
        session_every_s: ... or every T seconds.
        window_size: predictions in the recent window.
        max_backlog_records: most undelivered records kept on disk.
        log_image_ids: also keep the client's ``image_id`` in records (off: may identify a patient).
        in_scoring_server: this process is MLflow's scoring server (``mlflow models serve``).
    """

    # The defaults are the settings' defaults: one default per setting.
    enabled: bool = Settings.enable_tracking
    mode: str = Settings.telemetry_mode
    tracking_uri: str = ""
    experiment_name: str = Settings.experiment_name
    log_dir: Path = field(default_factory=lambda: Settings().telemetry_dir)
    part_records: int = Settings.log_part_records
    part_seconds: float = Settings.log_part_seconds
    ship_interval: float = Settings.ship_interval
    session_every_n: int = Settings.session_every_n
    session_every_s: float = Settings.session_every_s
    window_size: int = Settings.window_size
    max_backlog_records: int = Settings.max_backlog
    log_image_ids: bool = Settings.log_image_ids
    in_scoring_server: bool = Settings.in_scoring_server

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TelemetryConfig:
        """Read the settings from environment variables (through :func:`load_settings`)."""
        return cls.from_settings(load_settings(environ))

    @classmethod
    def from_settings(cls, settings: Settings) -> TelemetryConfig:
        """Telemetry's part of the settings."""
        return cls(
            enabled=settings.enable_tracking,
            mode=settings.telemetry_mode,
            tracking_uri=settings.tracking_uri,
            experiment_name=settings.experiment_name,
            log_dir=settings.telemetry_dir,
            part_records=settings.log_part_records,
            part_seconds=settings.log_part_seconds,
            ship_interval=settings.ship_interval,
            session_every_n=settings.session_every_n,
            session_every_s=settings.session_every_s,
            window_size=settings.window_size,
            max_backlog_records=settings.max_backlog,
            log_image_ids=settings.log_image_ids,
            in_scoring_server=settings.in_scoring_server,
        )

    def active_here(self) -> bool:
        """Whether this process should track predictions at all.

        In the default ``serving`` mode only MLflow's scoring server tracks: in-process
        evaluation and batch scoring are not serving.
        """
        if not self.enabled or self.mode == "never":
            return False
        if self.mode == "always":
            return True
        return self.in_scoring_server
