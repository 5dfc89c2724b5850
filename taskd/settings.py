"""Settings as data: one frozen dataclass, built from the environment when asked, never at import.

Precedence is argument > environment > default, resolved at call time.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import schemas as _schemas
from taskd.names import PRIVATE_DIR, REDIS_DIR, REJECTED_DIR

DEFAULT_DATA_ROOT = "/usr/local/mozart/data"
"""Where the old Taskd kept everything; the UI writes task_queue/ under it."""
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
"""Broker and result backend."""
DEFAULT_ALLOWED_FILE_ROOTS = "/tmp"
"""PACKMS `files` must resolve inside one of these (`:`-separated)."""
DEFAULT_CONFIG_DIR = "/etc/taskd"
"""The folder of the env file systemd and compose load (passwords included): never packable."""
DEFAULT_OUTPUT_MODE = 0o640
"""Permission bits of downloads, result sets and their markers, whatever the umask: the owner
reads and writes, its group (the UI's) reads, other users nothing."""
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
DEFAULT_EXEC_OUTPUT_BYTES = 1 << 20
EXEC_SCHEMA_DIR = Path(_schemas.__file__).resolve().parent / "exec"
"""The EXEC type's schema: read only when TASKD_EXEC_DIR turns program tasks on."""
HTTP_SCHEMA_DIR = Path(_schemas.__file__).resolve().parent / "http"
"""The HTTP type's schema: read only when TASKD_HTTP_ALLOWED_HOSTS turns web tasks on."""
DEFAULT_HTTP_BODY_BYTES = 1 << 20
"""A notify mail larger than this is not sent: the UI writes a short note, and most SMTP
servers refuse messages of 10 to 25 MB anyway."""


MIN_TOKEN_CHARS = 16
TOKEN_RE = re.compile(rf"[A-Za-z0-9._~+/=-]{{{MIN_TOKEN_CHARS},512}}")
"""A bearer token as RFC 6750 allows one, long enough not to be guessed."""


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
    """`url` with any password replaced by `***`: fit for messages, logs and pages. Each part
    of a sentinel URL (`sentinel://...;sentinel://...`) is masked alike."""
    return ";".join(_redact_one(part) for part in url.split(";"))


def _redact_one(url: str) -> str:
    # user:password@ (or a lone token@) after the scheme, and a password= query parameter.
    url = re.sub(
        r"^(\s*[a-z][a-z0-9+.-]*://)([^/:@?#]*:)?[^/?#]*@", _mask_userinfo, url, flags=re.I
    )
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", url)


def _mask_userinfo(match: re.Match[str]) -> str:
    user = match.group(2)
    return f"{match.group(1)}{user or ''}***@"


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "yes", "true", "on"):
        return True
    if raw in ("0", "no", "false", "off"):
        return False
    raise SettingsError(f"{name}={env[name]!r} must be 1 or 0 (or yes/no, true/false, on/off)")


def _paths(raw: str) -> tuple[Path, ...]:
    return tuple(Path(p) for p in raw.split(":") if p)


_OCTAL_MODE = re.compile(r"(?:0o?)?[0-7]{1,4}")


def _mode(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not _OCTAL_MODE.fullmatch(raw):
        raise SettingsError(
            f"{name}={raw!r} is not an octal file mode; write e.g. {default:04o} "
            "(owner read-write, group read, others nothing)"
        )
    return int(raw.removeprefix("0o"), 8)


def _check_output_mode(name: str, mode: int) -> None:
    """A mode for files other users of the machine may meet: no special bits, never writable by
    everyone, and the owner (taskd itself) reads and writes."""
    shown = f"{name}={mode:04o}" if 0 <= mode <= 0o7777 else f"{name}={mode}"
    if not 0 <= mode <= 0o777:
        raise SettingsError(
            f"{shown} sets bits outside 0777 (setuid, setgid or sticky, which a download "
            f"must not carry); write three octal digits, e.g. {DEFAULT_OUTPUT_MODE:04o}"
        )
    fixed = (mode | 0o600) & ~0o002
    if mode & 0o002:
        raise SettingsError(
            f"{shown} lets every user of the machine change the outputs; write {fixed:04o} instead"
        )
    if mode & 0o600 != 0o600:
        raise SettingsError(
            f"{shown} does not let taskd read and write what it writes; "
            f"make the first digit 6, e.g. {fixed:04o}"
        )


def folder_mode(mode: int) -> int:
    """A folder's mode for files of `mode`: whoever may read the files may also enter it."""
    return mode | (mode & 0o444) >> 2


def _real(path: Path) -> Path:
    """`path` normalised, with the symlinks of the part that exists resolved."""
    try:
        return Path(os.path.realpath(os.path.normpath(path)))
    except OSError as exc:  # a link taskd's user may not read (/proc/<pid>/cwd)
        raise SettingsError(
            f"{str(path)!r} cannot be resolved ({exc.strerror or exc}); name a folder that "
            "taskd's user can reach"
        ) from None


def _names_top(path: Path) -> bool:
    """Whether an absolute path names `/` itself (`//`, `/srv/..`), by its name alone."""
    return os.path.normpath(path).strip("/") == ""


def _overlap(root: Path, folder: Path) -> bool:
    """Whether one of two resolved folders is, or lies inside, the other."""
    return folder.is_relative_to(root) or root.is_relative_to(folder)


def _whole_disk(root: Path, config_dir: Path) -> SettingsError:
    return SettingsError(
        f"TASKD_ALLOWED_FILE_ROOTS: {str(root)!r} is the whole file system, so a PACKMS could "
        f"pack any file (the passwords in {config_dir} included); name the folders users may "
        "pack from, e.g. /srv/shared"
    )


def _overlaps(root: Path, how: str, variable: str, folder: Path) -> SettingsError:
    return SettingsError(
        f"TASKD_ALLOWED_FILE_ROOTS: {str(root)!r} {how} {folder} ({variable}), so a PACKMS "
        "could pack what only taskd may read; name folders outside it, e.g. /srv/shared"
    )


def _host_entry(entry: str) -> bool:
    """`host`, `host:port`, an IPv4 address, or an IPv6 one in brackets (with or without port)."""
    if entry.count(":") > 1 and not entry.startswith("["):
        return False  # an IPv6 address without brackets: its last part would read as a port
    parts = urlsplit("//" + entry)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    return bool(parts.hostname) and not (parts.username or parts.path or parts.query)


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
    config_dir: Path = Path(DEFAULT_CONFIG_DIR)
    output_mode: int = DEFAULT_OUTPUT_MODE
    """TASKD_OUTPUT_MODE: permission bits of downloads and result sets (`folder_mode` for
    their folders), set whatever the umask."""
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
    exec_dir: Path | None = None
    """TASKD_EXEC_DIR: the folder of the programs EXEC tasks may run; EXEC is off without it."""
    exec_output_bytes: int = DEFAULT_EXEC_OUTPUT_BYTES
    http_allowed_hosts: tuple[str, ...] = ()
    """TASKD_HTTP_ALLOWED_HOSTS: the hosts (`host` or `host:port`) HTTP tasks may call; HTTP is
    off without them."""
    http_body_bytes: int = DEFAULT_HTTP_BODY_BYTES
    redis_master: str | None = None
    """TASKD_REDIS_MASTER: with a sentinel:// URL, the name the sentinels know the master by."""
    redis_ca_file: Path | None = None
    """TASKD_REDIS_CA_FILE: with a rediss:// URL, the CA certificates Redis's is checked against
    (the system's without it)."""
    spares: bool = True
    """TASKD_SPARES: 0 to make a new temp file for every rewrite of a task file instead of
    refilling its spare (`bridge/files.py` `Spare`): for a task_queue/ the kernel's NFS server
    exports, whose clients read without an open file a lease could see."""
    http_token: str | None = field(default=None, repr=False)
    """TASKD_HTTP_TOKEN: opens the task door on the bridge's HTTP port (`bridge/door.py`) to
    clients that send it as a bearer token; no door without it."""

    def __post_init__(self) -> None:
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
            raise SettingsError(
                f"TASKD_REDIS_URL={redact_url(self.redis_url)!r} is not a Redis URL; "
                "write redis://host:port/db (rediss:// for TLS, sentinel://... for sentinels)"
            )
        self._check_redis_extras()
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
        _check_output_mode("TASKD_OUTPUT_MODE", self.output_mode)
        self._check_root_names()

    def _check_redis_extras(self) -> None:
        sentinel = self.redis_url.startswith("sentinel://")
        if sentinel and not self.redis_master:
            raise SettingsError(
                "TASKD_REDIS_URL names sentinels: set TASKD_REDIS_MASTER to the name they know "
                "the master by (sentinel monitor <name> ...), e.g. mymaster"
            )
        if self.redis_master and not sentinel:
            raise SettingsError(
                "TASKD_REDIS_MASTER is for sentinels: write TASKD_REDIS_URL as "
                "sentinel://host1:26379/0;sentinel://host2:26379, or unset TASKD_REDIS_MASTER"
            )
        if self.redis_ca_file is not None and not self.redis_url.startswith("rediss://"):
            raise SettingsError(
                "TASKD_REDIS_CA_FILE is for TLS: write TASKD_REDIS_URL as rediss://host:port/db, "
                "or unset TASKD_REDIS_CA_FILE"
            )
        if self.redis_ca_file is not None and not self.redis_ca_file.is_absolute():
            raise SettingsError(
                f"TASKD_REDIS_CA_FILE={str(self.redis_ca_file)!r} is a relative path; write "
                "the absolute path of the CA certificates (PEM) Redis's certificate is checked "
                "against"
            )
        if self.redis_ca_file is not None and not self.redis_ca_file.is_file():
            raise SettingsError(
                f"TASKD_REDIS_CA_FILE={str(self.redis_ca_file)!r} is not a file; write the path "
                "of the CA certificates (PEM) Redis's certificate is checked against"
            )

    def _check_root_names(self) -> None:
        # What the names alone say; `check_file_roots` then looks at the disk.
        if not self.config_dir.is_absolute() or _names_top(self.config_dir):
            raise SettingsError(
                f"TASKD_CONFIG_DIR={str(self.config_dir)!r} must be the absolute folder of the "
                f"env file taskd is started with; write e.g. {DEFAULT_CONFIG_DIR}"
            )
        for entry in self.http_allowed_hosts:
            if not _host_entry(entry):
                raise SettingsError(
                    f"TASKD_HTTP_ALLOWED_HOSTS: {entry!r} is not host or host:port; write e.g. "
                    "api.example.com, api.example.com:8443, 10.0.0.5 or [fd00::5]:8080"
                )
        if self.http_token is not None and not TOKEN_RE.fullmatch(self.http_token):
            raise SettingsError(
                f"TASKD_HTTP_TOKEN must be {MIN_TOKEN_CHARS} or more letters, digits or "
                "-._~+/= (no spaces); make one with: openssl rand -hex 32"
            )
        if self.exec_dir is not None and not self.exec_dir.is_absolute():
            raise SettingsError(
                f"TASKD_EXEC_DIR={str(self.exec_dir)!r} is a relative path; write the absolute "
                "folder of the programs EXEC tasks may run, e.g. /usr/local/lib/taskd/programs"
            )
        for root in self.allowed_file_roots:
            if not root.is_absolute():
                raise SettingsError(
                    f"TASKD_ALLOWED_FILE_ROOTS: {str(root)!r} is a relative path, which would "
                    "depend on the folder taskd happens to start in; write absolute folders "
                    "separated by ':', e.g. /srv/shared"
                )
            if _names_top(root):
                raise _whole_disk(root, self.config_dir)

    def check_file_roots(self) -> None:
        """Refuse allowed roots that would let a PACKMS pack what is not the users' to take.

        `/` holds everything; a root that holds the data root hands out every user's task
        files, result sets and downloads, and one that overlaps the configuration hands out its
        passwords. A root inside the data root is fine (tests and small sites keep the files
        to pack there) unless it overlaps a folder taskd keeps its own data in. Paths are
        compared normalised, with symlinks resolved where they exist.
        """
        for root in self.allowed_file_roots:
            real = _real(root)
            if real == Path("/"):
                raise _whole_disk(root, self.config_dir)
            if _real(self.data_root).is_relative_to(real):
                raise _overlaps(root, "holds the data root", "TASKD_DATA_ROOT", self.data_root)
            for what, variable, folder in self._guarded():
                if _overlap(real, _real(folder)):
                    raise _overlaps(root, f"overlaps {what}", variable, folder)

    def _guarded(self) -> tuple[tuple[str, str, Path], ...]:
        """Folders no allowed root may hold or lie in: what taskd keeps, the configuration."""
        return (
            ("the configuration folder", "TASKD_CONFIG_DIR", self.config_dir),
            ("the mail archive", "TASKD_MAIL_DB", self.mail_db_path),
            ("the task queue", "TASKD_DATA_ROOT", self.task_queue),
            ("the work space", "TASKD_DATA_ROOT", self.work_space),
            ("the downloads", "TASKD_DATA_ROOT", self.download),
            ("the result sets", "TASKD_DATA_ROOT", self.retrieve),
            ("taskd's own folder", "TASKD_DATA_ROOT", self.data_root / PRIVATE_DIR),
            ("the rejected originals", "TASKD_DATA_ROOT", self.data_root / REJECTED_DIR),
            ("the private Redis's files", "TASKD_DATA_ROOT", self.data_root / REDIS_DIR),
        )

    @property
    def private_folders(self) -> tuple[tuple[str, Path], ...]:
        """(variable, folder) of what only taskd may read. PACKMS packs no file inside one of
        them unless the allowed root it lies in is inside that folder too, whatever the roots
        (see `check_file_roots`, which refuses such roots but for the data root's)."""
        folders = [
            ("TASKD_DATA_ROOT", self.data_root),
            ("TASKD_MAIL_DB", self.mail_db_path),
            ("TASKD_CONFIG_DIR", self.config_dir),
        ]
        if self.mail_index_path is not None:
            folders.append(("TASKD_MAIL_INDEX", self.mail_index_path))
        return tuple(folders)

    def require_data_root(self) -> None:
        """Refuse to run on a data root that is not there (a typo, or an unmounted share):
        creating it would only hide the mistake behind an empty queue."""
        where = f"TASKD_DATA_ROOT={str(self.data_root)!r}"
        if not self.data_root.exists():
            raise SettingsError(
                f"{where} does not exist; create it (and task_queue/ in it) or point "
                "TASKD_DATA_ROOT at the data root"
            )
        if not self.data_root.is_dir():
            raise SettingsError(
                f"{where} is not a folder; point TASKD_DATA_ROOT at the data root folder"
            )

    @property
    def type_dirs(self) -> tuple[Path, ...]:
        """Where task types are read beside the built-in ones: the types ops turned on (EXEC
        with TASKD_EXEC_DIR, HTTP with TASKD_HTTP_ALLOWED_HOSTS), then TASKD_SCHEMA_PATH's
        folders (a later type of the same name wins)."""
        turned_on = [EXEC_SCHEMA_DIR] if self.exec_dir is not None else []
        if self.http_allowed_hosts:
            turned_on.append(HTTP_SCHEMA_DIR)
        return (*turned_on, *self.schema_dirs)

    @property
    def all_type_dirs(self) -> tuple[Path, ...]:
        """`type_dirs` with the types that are off here too (ops set their caps beforehand)."""
        return (EXEC_SCHEMA_DIR, HTTP_SCHEMA_DIR, *self.schema_dirs)

    @property
    def output_folder_mode(self) -> int:
        """The mode of the folders outputs and result sets are created in."""
        return folder_mode(self.output_mode)

    def _check_limits(self) -> None:
        # 0 or less would refuse every task; say so at start rather than on each task.
        limits = (
            ("TASKD_MAX_PACK_FILES", self.max_pack_files, DEFAULT_MAX_PACK_FILES),
            ("TASKD_MAX_PACK_MAILS", self.max_pack_mails, DEFAULT_MAX_PACK_MAILS),
            ("TASKD_MAX_PACK_BYTES", self.max_pack_bytes, DEFAULT_MAX_PACK_BYTES),
            ("TASKD_MAX_NOTIFY_BYTES", self.max_notify_bytes, DEFAULT_MAX_NOTIFY_BYTES),
            ("TASKD_EXEC_OUTPUT_BYTES", self.exec_output_bytes, DEFAULT_EXEC_OUTPUT_BYTES),
            ("TASKD_HTTP_BODY_BYTES", self.http_body_bytes, DEFAULT_HTTP_BODY_BYTES),
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
            "config_dir": Path(env.get("TASKD_CONFIG_DIR") or DEFAULT_CONFIG_DIR),
            "output_mode": _mode(env, "TASKD_OUTPUT_MODE", DEFAULT_OUTPUT_MODE),
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
            "exec_dir": Path(env["TASKD_EXEC_DIR"]) if env.get("TASKD_EXEC_DIR") else None,
            "exec_output_bytes": _int(env, "TASKD_EXEC_OUTPUT_BYTES", DEFAULT_EXEC_OUTPUT_BYTES),
            "http_allowed_hosts": tuple(
                h.lower() for h in re.split(r"[\s,]+", env.get("TASKD_HTTP_ALLOWED_HOSTS", "")) if h
            ),
            "http_body_bytes": _int(env, "TASKD_HTTP_BODY_BYTES", DEFAULT_HTTP_BODY_BYTES),
            "http_token": env.get("TASKD_HTTP_TOKEN") or None,
            "spares": _switch(env, "TASKD_SPARES", True),
            "redis_master": env.get("TASKD_REDIS_MASTER") or None,
            "redis_ca_file": Path(env["TASKD_REDIS_CA_FILE"])
            if env.get("TASKD_REDIS_CA_FILE")
            else None,
        }
        known = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in known:
                raise SettingsError(f"unknown setting {key!r}")
            if value is not None:
                values[key] = value
        settings = cls(**values)
        # Here rather than in the constructor, as it reads the disk (symlinks); and only for
        # roots someone chose. The default /tmp may hold a data root made there (tests, trials):
        # PACKMS still never packs from it (`private_folders`).
        if env.get("TASKD_ALLOWED_FILE_ROOTS") or overrides.get("allowed_file_roots"):
            settings.check_file_roots()
        return settings

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
