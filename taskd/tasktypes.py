"""Task types, read from `<TYPE>.schema.json` files.

Each schema validates the UI's JSON and carries the type's metadata under `x-taskd`: the Celery
task name and queue, the runtime-info parts of the file name, ids assigned when the file is taken,
time limits and the retry policy. A new type is a schema plus a task function; the bridge reads
only this.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

import schemas as _schemas_pkg
from taskd import formats as formats_module

TYPE_RE = re.compile(r"[A-Z][A-Z0-9_]*")
SCHEMA_SUFFIX = ".schema.json"
BUILTIN_SCHEMA_DIR = Path(_schemas_pkg.__file__).resolve().parent

# How an id assigned at intake is made. The alphabet leaves out look-alikes (0/O, 1/I).
ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
ID_FORMATS = {"token": 10}


class TaskTypeError(ValueError):
    """A schema file is unusable; the message names the file and the fix."""


@dataclass(frozen=True)
class RetryPolicy:
    intervals: tuple[float, ...] = ()

    @classmethod
    def parse(cls, raw: object) -> RetryPolicy:
        """`"60 600 3600"` (or a list) are the waits before each further try."""
        if raw is None or raw == "":
            return cls()
        parts = raw.split() if isinstance(raw, str) else raw
        if not isinstance(parts, list | tuple):
            raise TaskTypeError(f'retry intervals {raw!r}: write seconds like "60 600 3600"')
        try:
            values = tuple(float(p) for p in parts)
        except (TypeError, ValueError):
            raise TaskTypeError(
                f'retry intervals {raw!r}: write seconds like "60 600 3600"'
            ) from None
        if any(v < 0 for v in values):
            raise TaskTypeError(f"retry intervals {raw!r}: negative wait")
        return cls(values)

    def delay(self, retries_done: int) -> float | None:
        """Seconds to wait before the next try, or None when no try is left."""
        if retries_done < len(self.intervals):
            return self.intervals[retries_done]
        return None


@dataclass(frozen=True)
class TaskType:
    name: str
    schema: Mapping[str, Any]
    task: str
    queue: str
    runtime_info: tuple[str, ...]
    assign: Mapping[str, str]
    time_limit: float | None
    soft_time_limit: float | None
    retry: RetryPolicy
    max_running: int | None = None  # jobs of this type running at once, all workers together

    @property
    def module(self) -> str:
        return self.task.rsplit(".", 1)[0]

    def assign_ids(self, fields: Mapping[str, Any]) -> dict[str, str]:
        """Ids this type needs when taken, for those the UI did not give."""
        out: dict[str, str] = {}
        for key, fmt in self.assign.items():
            if not fields.get(key):
                out[key] = "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_FORMATS[fmt]))
        return out

    def validate(
        self, content: Mapping[str, Any], formats: jsonschema.FormatChecker | None = None
    ) -> list[str]:
        """Every schema error, each as a sentence naming the field and how to fix it."""
        validator = _validator(self.schema, formats or _default_formats())
        errors = sorted(validator.iter_errors(content), key=lambda e: list(e.absolute_path))
        return [describe_error(e, self.schema) for e in errors]


_VALIDATORS: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
"""Validators made, by (schema, formats) object: a validator costs more to make than to run.
Each entry holds its schema and checker, so their ids stay theirs while it lives."""
_VALIDATORS_MAX = 256
_DEFAULTS: list[jsonschema.FormatChecker] = []


def _validator(
    schema: Mapping[str, Any], formats: jsonschema.FormatChecker
) -> jsonschema.Draft202012Validator:
    key = (id(schema), id(formats))
    made = _VALIDATORS.get(key)
    if made is None or made[0] is not schema or made[1] is not formats:
        if len(_VALIDATORS) >= _VALIDATORS_MAX:
            _VALIDATORS.clear()
        validator = jsonschema.Draft202012Validator(schema, format_checker=formats)
        made = _VALIDATORS[key] = (schema, formats, validator)
    return made[2]


def _default_formats() -> jsonschema.FormatChecker:
    if not _DEFAULTS:
        _DEFAULTS.append(formats_module.checker())
    return _DEFAULTS[0]


def field_path(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _hint(schema: Mapping[str, Any], path: Iterable[Any]) -> str:
    node: Any = schema
    for part in path:
        if not isinstance(node, Mapping):
            return ""
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            node = node.get("properties", {}).get(part, {})
    return str(node.get("description", "")) if isinstance(node, Mapping) else ""


def describe_error(error: jsonschema.ValidationError, schema: Mapping[str, Any]) -> str:
    path = list(error.absolute_path)
    # A schema can say in words what a combination rule (anyOf, dependentRequired...) means.
    custom = error.schema.get("x-messages", {}) if isinstance(error.schema, Mapping) else {}
    if isinstance(custom, Mapping) and isinstance(custom.get(str(error.validator)), str):
        return str(custom[str(error.validator)])
    if error.validator == "required" and isinstance(error.instance, Mapping):
        missing = [k for k in error.validator_value if k not in error.instance]
        name = field_path([*path, missing[0]]) if missing else field_path(path)
        hint = _hint(schema, [*path, missing[0]]) if missing else ""
        return f"field {name!r} is missing" + (f": {hint}" if hint else "")
    if error.validator == "additionalProperties":
        where = field_path(path)
        place = f"field {where!r}" if where else "the task"
        return f"{place}: {error.message}; remove it or check its spelling"
    name = field_path(path) or "the task"
    if error.validator == "format" and error.cause is not None:
        return f"field {name!r}: {error.cause}"
    hint = _hint(schema, path)
    return f"field {name!r}: {error.message}" + (f" ({hint})" if hint else "")


def _metadata(path: Path, schema: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = schema.get("x-taskd")
    if not isinstance(meta, Mapping):
        raise TaskTypeError(f'{path}: no "x-taskd" object with the type\'s metadata')
    for key in ("task", "queue"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise TaskTypeError(f"{path}: x-taskd.{key} must be a non-empty string")
    return meta


def _limit(path: Path, meta: Mapping[str, Any], key: str) -> float | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or value <= 0:
        raise TaskTypeError(f"{path}: x-taskd.{key} must be a positive number of seconds")
    return float(value)


def load_type(path: Path) -> TaskType:
    name = path.name[: -len(SCHEMA_SUFFIX)]
    if not TYPE_RE.fullmatch(name):
        raise TaskTypeError(f"{path}: a type name is upper case, like RETRMS")
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
    except (OSError, ValueError, jsonschema.SchemaError) as exc:
        raise TaskTypeError(f"{path}: not a usable JSON Schema: {exc}") from exc
    meta = _metadata(path, schema)
    assign = dict(meta.get("assign", {}))
    for key, fmt in assign.items():
        if fmt not in ID_FORMATS:
            raise TaskTypeError(f"{path}: x-taskd.assign.{key}: unknown id format {fmt!r}")
    return TaskType(
        name=name,
        schema=schema,
        task=meta["task"],
        queue=meta["queue"],
        runtime_info=tuple(meta.get("runtime-info", ["progress"])),
        assign=assign,
        time_limit=_limit(path, meta, "time-limit"),
        soft_time_limit=_limit(path, meta, "soft-time-limit"),
        retry=RetryPolicy.parse(meta.get("retry-intervals")),
        max_running=_cap(path, meta),
    )


def _cap(path: Path, meta: Mapping[str, Any]) -> int | None:
    value = meta.get("max-running")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TaskTypeError(
            f"{path}: x-taskd.max-running must be a whole number of jobs, 0 or more "
            "(0 holds every job of the type)"
        )
    return value


def load_types(extra_dirs: Iterable[Path] = ()) -> dict[str, TaskType]:
    """The built-in types, then those of `extra_dirs` (a later one of the same name wins)."""
    types: dict[str, TaskType] = {}
    for directory in (BUILTIN_SCHEMA_DIR, *extra_dirs):
        for path in sorted(Path(directory).glob("*" + SCHEMA_SUFFIX)):
            task_type = load_type(path)
            types[task_type.name] = task_type
    return types


OFF_UNTIL = {"EXEC": "TASKD_EXEC_DIR", "HTTP": "TASKD_HTTP_ALLOWED_HOSTS"}
"""Built-in types that are off until ops configure them, each with the setting that turns it on
(`Settings.type_dirs`)."""

NOTIFY = "NOTIFY"
NOTIFY_TIME_LIMIT_S = 300.0


def notify_type(retry_intervals: str) -> TaskType:
    """Sending a task's notify mail: a job of its own on the `notify` queue, not a file type."""
    return TaskType(
        name=NOTIFY,
        schema={},
        task="tasks.notify.send",
        queue="notify",
        runtime_info=(),
        assign={},
        time_limit=NOTIFY_TIME_LIMIT_S,
        soft_time_limit=NOTIFY_TIME_LIMIT_S - 30,
        retry=RetryPolicy.parse(retry_intervals),
    )
