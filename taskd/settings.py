"""Settings as data: one frozen dataclass, built from the environment when asked, never at import.

Precedence is argument > environment > default, resolved at call time.
"""

from __future__ import annotations

import math
import re
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_DATA_ROOT = "/usr/local/mozart/data"
"""Where the old Taskd kept everything; the UI writes task_queue/ under it."""
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
"""Broker and result backend."""
DEFAULT_ALLOWED_FILE_ROOTS = "/tmp"
"""PACKMS `files` must resolve inside one of these (`:`-separated)."""
DEFAULT_MAX_TASK_BYTES = 1024 * 1024
"""A task file larger than this is rejected unread."""
DEFAULT_SETTLE_S = 0.2
"""A parseable file without a close event is taken after this long unchanged."""
DEFAULT_REJECT_AFTER_S = 10.0
"""An unparseable file unchanged this long is rejected."""
DEFAULT_RESCAN_INTERVAL_S = 30.0
"""Full rescan of task_queue/, to catch what inotify missed."""
DEFAULT_MIRROR_INTERVAL_S = 1.0
"""One mirror tick: read all active jobs' states in one round trip, write what changed."""
DEFAULT_RECOVERY_GRACE_S = 30.0
"""A started job whose lease has been gone this long is run again (its worker died)."""
DEFAULT_NOTIFY_RETRY_INTERVALS = "30 120 600 1800 3600"
"""Waits before each further try of a notify mail that SMTP did not take."""
DEFAULT_SMTP_TIMEOUT_S = 30.0
"""Connect and command timeout towards the SMTP server."""
DEFAULT_VISIBILITY_TIMEOUT_S = 4 * 3600
"""Redis redelivers an unacknowledged job after this long; keep it above every time limit."""
DEFAULT_HTTP_HOST = "127.0.0.1"
"""The bridge's status page, /metrics and /healthz answer on this address only (when on)."""
DEFAULT_MAX_PACK_FILES = 10_000
"""Entries of a PACKMS `files` list. Each is resolved and opened on its own; a list this long
is already far past what a person picks by hand, so more is a runaway UI or a mistake."""
DEFAULT_MAX_PACK_MAILS = 1_000_000
"""Mails in one pack: a large mailbox's years. More is an archive export, not a download."""
DEFAULT_MAX_PACK_BYTES = 20 << 30
"""Bytes of mails and files in one pack (before compression): bounds the tmp-space and the
download folder a single task can fill, and keeps a pack under the 2-hour time limit."""
DEFAULT_MAX_NOTIFY_BYTES = 10 << 20
"""A notify mail larger than this is not sent: the UI writes a short note, and most SMTP
servers refuse messages of 10 to 25 MB anyway."""


class SettingsError(ValueError):
    """A setting has a value taskd cannot use; the message names the variable and the fix."""


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(
            f"{name}={raw!r} is not a number of seconds; write e.g. {default}"
        ) from None
    if not math.isfinite(value) or value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None


def redact_url(url: str) -> str:
    """`url` with any password replaced by `***`: fit for messages, logs and pages."""
    # user:password@ (or a lone token@) after the scheme, and a password= query parameter.
    url = re.sub(r"^([a-z][a-z0-9+.-]*://)([^/:@?#]*:)?[^/?#]*@", _mask_userinfo, url, flags=re.I)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


def _mask_userinfo(match: re.Match[str]) -> str:
    user = match.group(2)
    return f"{match.group(1)}{user or ''}***@"


def _paths(raw: str) -> tuple[Path, ...]:
    return tuple(Path(p) for p in raw.split(":") if p)


@dataclass(frozen=True)
class Settings:
    data_root: Path = Path(DEFAULT_DATA_ROOT)
    redis_url: str = DEFAULT_REDIS_URL
    mail_db: Path | None = None
    mail_index: str = ""
    """Raw TASKD_MAIL_INDEX: where workers cache mail headers; "" the default, "off" none."""
    smtp_url: str | None = None
    mail_from: str = ""
    allowed_file_roots: tuple[Path, ...] = (Path(DEFAULT_ALLOWED_FILE_ROOTS),)
    max_task_bytes: int = DEFAULT_MAX_TASK_BYTES
    settle: float = DEFAULT_SETTLE_S
    reject_after: float = DEFAULT_REJECT_AFTER_S
    rescan_interval: float = DEFAULT_RESCAN_INTERVAL_S
    mirror_interval: float = DEFAULT_MIRROR_INTERVAL_S
    visibility_timeout: float = DEFAULT_VISIBILITY_TIMEOUT_S
    metrics_port: int | None = None
    http_port: int | None = None
    http_host: str = DEFAULT_HTTP_HOST
    log_format: str = "text"
    schema_dirs: tuple[Path, ...] = field(default_factory=tuple)
    notify_retry_intervals: str = DEFAULT_NOTIFY_RETRY_INTERVALS
    recovery_grace: float = DEFAULT_RECOVERY_GRACE_S
    smtp_timeout: float = DEFAULT_SMTP_TIMEOUT_S
    max_pack_files: int = DEFAULT_MAX_PACK_FILES
    max_pack_mails: int = DEFAULT_MAX_PACK_MAILS
    max_pack_bytes: int = DEFAULT_MAX_PACK_BYTES
    max_notify_bytes: int = DEFAULT_MAX_NOTIFY_BYTES

    def __post_init__(self) -> None:
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(
                f"TASKD_REDIS_URL={redact_url(self.redis_url)!r} is not a Redis URL; "
                "write redis://host:port/db"
            )
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"TASKD_LOG_FORMAT={self.log_format!r}: use text or json")
        if self.max_task_bytes <= 0:
            raise SettingsError("TASKD_MAX_TASK_BYTES must be positive")
        if self.mirror_interval <= 0:
            raise SettingsError("TASKD_MIRROR_INTERVAL must be positive")
        ports = (("TASKD_HTTP_PORT", self.http_port), ("TASKD_METRICS_PORT", self.metrics_port))
        for name, port in ports:
            if port is not None and not 0 < port < 65536:
                raise SettingsError(f"{name}={port} is not a TCP port; write one from 1 to 65535")
        self._check_limits()

    def _check_limits(self) -> None:
        # 0 or less would refuse every task; say so at start rather than on each task.
        limits = (
            ("TASKD_MAX_PACK_FILES", self.max_pack_files, DEFAULT_MAX_PACK_FILES),
            ("TASKD_MAX_PACK_MAILS", self.max_pack_mails, DEFAULT_MAX_PACK_MAILS),
            ("TASKD_MAX_PACK_BYTES", self.max_pack_bytes, DEFAULT_MAX_PACK_BYTES),
            ("TASKD_MAX_NOTIFY_BYTES", self.max_notify_bytes, DEFAULT_MAX_NOTIFY_BYTES),
        )
        for name, value, default in limits:
            if value < 1:
                raise SettingsError(
                    f"{name}={value} must be a positive whole number; the default is {default}"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "data_root": Path(env.get("TASKD_DATA_ROOT") or DEFAULT_DATA_ROOT),
            "redis_url": env.get("TASKD_REDIS_URL") or DEFAULT_REDIS_URL,
            "mail_db": Path(env["TASKD_MAIL_DB"]) if env.get("TASKD_MAIL_DB") else None,
            "mail_index": env.get("TASKD_MAIL_INDEX") or "",
            "smtp_url": env.get("TASKD_SMTP_URL") or None,
            "mail_from": env.get("TASKD_MAIL_FROM") or "",
            "allowed_file_roots": _paths(
                env.get("TASKD_ALLOWED_FILE_ROOTS", DEFAULT_ALLOWED_FILE_ROOTS)
            ),
            "max_task_bytes": _int(env, "TASKD_MAX_TASK_BYTES", DEFAULT_MAX_TASK_BYTES),
            "settle": _float(env, "TASKD_SETTLE", DEFAULT_SETTLE_S),
            "reject_after": _float(env, "TASKD_REJECT_AFTER", DEFAULT_REJECT_AFTER_S),
            "rescan_interval": _float(env, "TASKD_RESCAN_INTERVAL", DEFAULT_RESCAN_INTERVAL_S, 0.1),
            "mirror_interval": _float(
                env, "TASKD_MIRROR_INTERVAL", DEFAULT_MIRROR_INTERVAL_S, 0.05
            ),
            "visibility_timeout": _float(
                env, "TASKD_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT_S, 1.0
            ),
            "metrics_port": _int(env, "TASKD_METRICS_PORT", None),
            "http_port": _int(env, "TASKD_HTTP_PORT", None),
            "http_host": env.get("TASKD_HTTP_HOST") or DEFAULT_HTTP_HOST,
            "log_format": env.get("TASKD_LOG_FORMAT") or "text",
            "schema_dirs": _paths(env.get("TASKD_SCHEMA_PATH", "")),
            "notify_retry_intervals": env.get("TASKD_NOTIFY_RETRY_INTERVALS")
            or DEFAULT_NOTIFY_RETRY_INTERVALS,
            "smtp_timeout": _float(env, "TASKD_SMTP_TIMEOUT", DEFAULT_SMTP_TIMEOUT_S, 0.1),
            # Above a worker's 5 s lease heartbeat, so a job Redis forgot is not run twice.
            "recovery_grace": _float(env, "TASKD_RECOVERY_GRACE", DEFAULT_RECOVERY_GRACE_S, 6.0),
            "max_pack_files": _int(env, "TASKD_MAX_PACK_FILES", DEFAULT_MAX_PACK_FILES),
            "max_pack_mails": _int(env, "TASKD_MAX_PACK_MAILS", DEFAULT_MAX_PACK_MAILS),
            "max_pack_bytes": _int(env, "TASKD_MAX_PACK_BYTES", DEFAULT_MAX_PACK_BYTES),
            "max_notify_bytes": _int(env, "TASKD_MAX_NOTIFY_BYTES", DEFAULT_MAX_NOTIFY_BYTES),
        }
        known = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise SettingsError(f"unknown setting {key!r}")
            if value is not None:
                values[key] = value
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    # Derived paths: every directory of the contract hangs off the data root.
    @property
    def task_queue(self) -> Path:
        return self.data_root / "task_queue"

    @property
    def work_space(self) -> Path:
        return self.data_root / "work_space"

    @property
    def download(self) -> Path:
        return self.data_root / "download"

    @property
    def retrieve(self) -> Path:
        return self.data_root / "retrieve"

    @property
    def mail_db_path(self) -> Path:
        return self.mail_db if self.mail_db is not None else self.data_root / "mail_db"

    @property
    def mail_index_path(self) -> Path | None:
        """The header cache of the mail archive (see tasks/mailstore/cache.py), or None."""
        if self.mail_index.strip().lower() in ("off", "none", "no", "0", "false"):
            return None
        return Path(self.mail_index) if self.mail_index else self.work_space / ".mail-index"

    @property
    def serve_port(self) -> int | None:
        """The bridge's HTTP port; TASKD_METRICS_PORT is the older name of TASKD_HTTP_PORT."""
        return self.http_port if self.http_port is not None else self.metrics_port

    @property
    def envelope_sender(self) -> str:
        return self.mail_from or f"taskd@{socket.gethostname()}"
