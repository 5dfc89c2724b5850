"""Judging a complete task file: taken, or rejected with an error a person can act on.

Pure: the caller reads the bytes; `taskd check` and the bridge share this verdict.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from jsonschema import FormatChecker

from bridge import contract
from bridge.schedule import parse_time, time_error
from taskd import states
from taskd.tasktypes import OFF_UNTIL, TaskType

QUEUED_AT_SLACK = timedelta(hours=1)  # clocks of hosts sharing a data root may differ a little


@dataclass(frozen=True)
class Verdict:
    fields: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    task_type: TaskType | None = None
    incomplete: bool = False  # could still be a file being written

    @property
    def ok(self) -> bool:
        return self.error is None


def kept_content(raw: bytes) -> dict[str, str]:
    """Unparseable content survives in the rejected file: as text if it is UTF-8."""
    try:
        return {states.ORIGINAL: contract.decode_utf8(raw)}
    except UnicodeDecodeError:
        return {states.ORIGINAL_B64: base64.b64encode(raw).decode("ascii")}


def too_large(size: int, limit: int) -> str:
    return (
        f"the file is {size} bytes, over the limit of {limit} "
        "(TASKD_MAX_TASK_BYTES); a task file holds criteria, not data: list file paths instead"
    )


def judge(
    raw: bytes,
    name: contract.TaskName,
    types: Mapping[str, TaskType],
    formats: FormatChecker | None = None,
) -> Verdict:
    try:
        text = contract.decode_utf8(raw)
    except UnicodeDecodeError as exc:
        return Verdict(
            fields=kept_content(raw),
            error=f"the file is not UTF-8 (byte {exc.start} is invalid); save it as UTF-8",
            incomplete=True,
        )
    try:
        fields = contract.parse_content(text)
    except contract.ValueProblem as exc:  # complete, and wrong: no need to wait
        return Verdict(fields=kept_content(raw), error=str(exc))
    except contract.ParseError as exc:
        return Verdict(fields=kept_content(raw), error=str(exc), incomplete=True)
    return judge_fields(fields, name, types, formats)


def judge_fields(
    fields: dict[str, Any],
    name: contract.TaskName,
    types: Mapping[str, TaskType],
    formats: FormatChecker | None = None,
) -> Verdict:
    reserved = contract.reserved_fields(fields)
    if reserved:
        return Verdict(
            fields=fields,
            error=f"field {reserved[0]!r} is written by taskd, not by the UI; remove it",
        )
    task_type = types.get(name.type)
    if task_type is None:
        return Verdict(fields=fields, error=unknown_type(name.type, types))
    declared = fields.get("type")
    if declared is not None and declared != name.type:
        return Verdict(
            fields=fields,
            task_type=task_type,
            error=(
                f"field 'type' is {declared!r} but the file name ends in .{name.type}; "
                "make them the same"
            ),
        )
    problems = _problems(fields, task_type, formats)
    if not problems:
        longest = contract.longest_name(
            name.stem, name.type, {**fields, **task_type.assign_ids(fields)}, task_type.runtime_info
        )
        too_long = contract.name_error(name.stem, name.type, longest)
        problems = [too_long] if too_long else []
    if problems:
        error = contract.bounded("; ".join(problems))
        return Verdict(fields=fields, task_type=task_type, error=error)
    return Verdict(fields=fields, task_type=task_type)


def _problems(
    fields: dict[str, Any], task_type: TaskType, formats: FormatChecker | None = None
) -> list[str]:
    problems = task_type.validate(fields, formats)
    timing = time_error(fields)
    if timing and not any(timing.split(":")[0] in p for p in problems):
        problems.append(timing)
    return problems


def adoption_error(
    fields: Mapping[str, Any],
    name: contract.TaskName,
    file_name: str,
    types: Mapping[str, TaskType],
    formats: FormatChecker | None = None,
) -> str | None:
    """Why a file that says the bridge wrote it cannot be resumed as it is, or None.

    Its task-id must be the one its name and directory give; a task still running must also
    carry a job id and numbers the bridge could have written, and the UI's fields must pass
    the type's schema (they were never judged if the file forged the bridge's fields).
    """
    task_id = fields.get(states.TASK_ID)
    if not isinstance(task_id, str) or not _named_for(file_name, task_id, name.type):
        return (
            f"field 'task-id' is {str(task_id)[:80]!r}, but the file name {file_name[:80]!r} "
            "is not that task's; taskd writes that field: remove it"
        )
    if fields.get(states.STATE) in states.TERMINAL:
        return None
    bad_id = contract.id_error(task_id)
    if bad_id:
        return bad_id
    task_type = types.get(name.type)
    if task_type is None:
        return unknown_type(name.type, types)
    bad = _bridge_field_error(fields)
    if bad:
        return bad
    own = {k: v for k, v in fields.items() if k not in states.BRIDGE_FIELDS}
    problems = [p for p in _problems(own, task_type, formats) if "Additional properties" not in p]
    return contract.bounded("; ".join(problems)) if problems else None


def _named_for(file_name: str, task_id: str, type_name: str) -> bool:
    suffix = f".{type_name}"
    return bool(task_id) and (
        file_name == f"{task_id}{suffix}"
        or (file_name.startswith(f"{task_id}-") and file_name.endswith(suffix))
    )


def _bridge_field_error(fields: Mapping[str, Any]) -> str | None:
    job_id = fields.get(states.JOB_ID)
    if not isinstance(job_id, str) or not _is_uuid(job_id):
        return f"field 'job-id' is {str(job_id)[:80]!r}, not a job id taskd wrote; remove it"
    for key, top in ((states.PROGRESS_FIELD, 100), (states.RETRIES, 1000)):
        value = fields.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return f"field {key!r} is {str(value)[:40]!r}, not a whole number; remove it"
        if value is not None and not 0 <= value <= top:
            return f"field {key!r} is {value}, outside 0-{top}; remove it"
    for key in (states.QUEUED_AT, states.STARTED_AT, states.RETRY_AT, states.WORKER):
        if key in fields and not isinstance(fields[key], str):
            return f"field {key!r} is not text; remove it"
    queued = parse_time(fields.get(states.QUEUED_AT))
    if queued is None or queued > datetime.now(UTC) + QUEUED_AT_SLACK:
        return (
            f"field 'queued-at' is {str(fields.get(states.QUEUED_AT))[:40]!r}, not a time taskd "
            "could have written; remove it"
        )
    return None


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def unknown_type(name: str, types: Mapping[str, TaskType]) -> str:
    """Why a file's type is not run here: a type ops have not turned on, or no type at all."""
    setting = OFF_UNTIL.get(name)
    if setting is not None:
        return (
            f"task type {name!r} is off on this system: ops turn it on with {setting} "
            "(docs/operations.md); until then no such task runs"
        )
    known = ", ".join(sorted(types)) or "none"
    return f"unknown task type {name!r} (file suffix); known types: {known}"
