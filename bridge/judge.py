"""Judging a complete task file: taken, or rejected with an error a person can act on.

Pure: the caller reads the bytes; `taskd check` and the bridge share this verdict.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge import contract
from bridge.schedule import time_error
from taskd import states
from taskd.tasktypes import TaskType


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


def judge(raw: bytes, name: contract.TaskName, types: Mapping[str, TaskType]) -> Verdict:
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
    except contract.ParseError as exc:
        return Verdict(fields=kept_content(raw), error=str(exc), incomplete=True)
    return judge_fields(fields, name, types)


def judge_fields(
    fields: dict[str, Any], name: contract.TaskName, types: Mapping[str, TaskType]
) -> Verdict:
    reserved = contract.reserved_fields(fields)
    if reserved:
        return Verdict(
            fields=fields,
            error=f"field {reserved[0]!r} is written by taskd, not by the UI; remove it",
        )
    task_type = types.get(name.type)
    if task_type is None:
        known = ", ".join(sorted(types)) or "none"
        return Verdict(
            fields=fields,
            error=f"unknown task type {name.type!r} (file suffix); known types: {known}",
        )
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
    problems = task_type.validate(fields)
    timing = time_error(fields)
    if timing and not any(timing.split(":")[0] in p for p in problems):
        problems.append(timing)
    if problems:
        return Verdict(fields=fields, task_type=task_type, error="; ".join(problems))
    return Verdict(fields=fields, task_type=task_type)
