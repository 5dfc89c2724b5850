"""The file contract as pure functions: task-file names, the lenient parse, field order, output.

No I/O. Everything that knows what a task file looks like asks this module.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from taskd import names, states
from taskd.atomic import BRIDGE_TEMP_SUFFIX  # noqa: F401 - the contract names it

USER_RE = re.compile(r"[A-Za-z0-9_]+")
TYPE_RE = re.compile(r"[A-Z][A-Z0-9_]*")
# DOTALL: a name with a newline is still a task file, rejected for it rather than ignored.
NAME_RE = re.compile(r"(?P<stem>.+)\.(?P<type>[A-Z][A-Z0-9_]*)", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")  # bytes of a name that were not UTF-8
# Editors and copy tools leave these beside real files; none is ever a task.
TEMP_PREFIXES = (".", "#", "~")
TEMP_SUFFIXES = ("~", "#")
ERR = "ERR"
RUNTIME_SEP = "_"
NAME_MAX = 255  # bytes in one file name (ext4, xfs, tmpfs, NFS all agree)
# Integers longer than this are no count, size or time any task could mean; Python would take
# seconds to convert some of them and refuses past 4300 digits.
MAX_INT_DIGITS = 30
MAX_DEPTH = 32  # a task is a flat record; deep nesting only exhausts parsers and picklers
MAX_ERROR_CHARS = 2000  # an `error` stays readable, and a file of errors cannot outgrow its input
WORST_PROGRESS = "100"  # the widest progress part a running or finished name can have


@dataclass(frozen=True)
class TaskName:
    user: str
    stem: str
    type: str


def ignore_reason(parts: tuple[str, ...]) -> str | None:
    """Why a path under task_queue/ (split in parts) is not a task file, or None if it may be."""
    if len(parts) != 2:
        return "not directly inside task_queue/<user-id>/"
    user, name = parts
    if not USER_RE.fullmatch(user):
        return f"user directory {user!r} is not [A-Za-z0-9_]+"
    if name.startswith(TEMP_PREFIXES) or name.endswith(TEMP_SUFFIXES):
        return "hidden, editor or temporary file"
    if not NAME_RE.fullmatch(name):
        return "no upper-case TYPE suffix"
    return None


def parse_name(parts: tuple[str, ...]) -> TaskName | None:
    if ignore_reason(parts) is not None:
        return None
    match = NAME_RE.fullmatch(parts[1])
    assert match is not None
    return TaskName(user=parts[0], stem=match["stem"], type=match["type"])


def is_notify_mail(name: str) -> bool:
    return names.is_notify_mail(name)


def notify_mail_name(task_id: str) -> str:
    return names.notify_mail(task_id)


def name_bytes(name: str) -> int:
    """How long a name is where the limit counts: its bytes on disk."""
    return len(name.encode("utf-8", "surrogateescape"))


def fits(name: str) -> bool:
    return name_bytes(name) <= NAME_MAX


def _progress_part(value: object) -> str:
    """A progress as a name shows it; whatever a file says, an integer 0-100."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return "0"
    return str(int(max(0, min(100, value))))


def _safe_part(value: object) -> str:
    text = str(value)
    return "".join("_" if ch in "/\\\x00" or ord(ch) < 32 else ch for ch in text)


def runtime_info(fields: Mapping[str, Any], parts: Iterable[str]) -> str:
    """`<retrieve-id>_<progress>` and the like, from the type's declared parts.

    On FAILURE/REJECTED the progress part reads ERR; a part whose field does not exist yet is
    left out (a RETRMS rejected before it has a retrieve-id reads plain ERR).
    """
    failed = fields.get(states.STATE) in states.FAILED
    out: list[str] = []
    for part in parts:
        if part == states.PROGRESS_FIELD:
            out.append(ERR if failed else _progress_part(fields.get(part)))
        elif fields.get(part) not in (None, ""):
            out.append(_safe_part(fields[part]))
    if failed and ERR not in out:
        out.append(ERR)
    return RUNTIME_SEP.join(out)


def render_name(
    task_id: str, task_type: str, fields: Mapping[str, Any], parts: Iterable[str]
) -> str:
    """The file name that follows the content: `<task-id>-<runtime-info>.<TYPE>`."""
    return f"{task_id}-{runtime_info(fields, parts)}.{task_type}"


def longest_name(
    task_id: str, task_type: str, fields: Mapping[str, Any], parts: Iterable[str]
) -> str:
    """The longest name the task can take in its life: progress 100, or ERR on failure."""
    parts = tuple(parts)
    names = [
        render_name(task_id, task_type, {**fields, states.PROGRESS_FIELD: 100}, parts),
        render_name(task_id, task_type, {**fields, states.STATE: states.FAILURE}, parts),
    ]
    return max(names, key=name_bytes)


def id_error(task_id: str) -> str | None:
    """Why a task-id cannot be used, whatever its length: bytes that are not UTF-8 (Redis,
    JSON and mail headers cannot carry them) or control characters (they forge log lines)."""
    if _SURROGATE.search(task_id):
        return "the file name is not UTF-8; name the file with UTF-8 characters only"
    control = _CONTROL.search(task_id)
    if control:
        return (
            f"the task-id has a control character ({control.group()!r}) in it; "
            "name the file with printable characters only"
        )
    return None


def name_error(task_id: str, task_type: str, longest: str) -> str | None:
    """Why a task cannot be taken under its name, or None when every name it needs fits."""
    bad_id = id_error(task_id)
    if bad_id:
        return bad_id
    extra = name_bytes(longest) - name_bytes(task_id)
    if name_bytes(longest) <= NAME_MAX:
        return None
    return (
        f"the task-id is {name_bytes(task_id)} bytes long, too long for the names the task "
        f"takes ({name_bytes(longest)} bytes, like {longest[:40]!r}...; at most {NAME_MAX}); "
        f"use a task-id of at most {NAME_MAX - extra} bytes"
    )


def bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """An error message cut to a readable length, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


class ParseError(ValueError):
    """Content is not one JSON object; the message says where."""


# A JSON string (kept whole, so commas inside it are never touched), or a comma before a closer.
_STRING_OR_TRAILING_COMMA = re.compile(r'("(?:\\.|[^"\\])*")|,(\s*[}\]])')


def strip_trailing_commas(text: str) -> str:
    """Drop a comma that stands right before `}` or `]` outside strings (the UI writes one)."""
    return _STRING_OR_TRAILING_COMMA.sub(
        lambda m: m.group(1) if m.group(1) is not None else m.group(2), text
    )


def decode_utf8(raw: bytes) -> str:
    """UTF-8 text with an optional BOM; raises UnicodeDecodeError otherwise."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    return raw.decode("utf-8")


class ValueProblem(ParseError):
    """Complete JSON holding a value no task can mean (a number too large); never a file
    still being written, so it is rejected at once."""


class _BadNumber:
    """`NaN` or `Infinity` kept as its text while parsing, so the field can be named."""

    def __init__(self, text: str) -> None:
        self.text = text


def _no_constant(name: str) -> _BadNumber:
    return _BadNumber(name)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueProblem(f"field {key!r} appears twice in one object; keep one of them")
            seen.add(key)
    return out


FLATTEN = "a task file holds a flat record: flatten it"
_INF = float("inf")
_INT_LIMIT = 10**MAX_INT_DIGITS


def _problem_of(value: Any) -> str | None:
    """What is wrong with one scalar, if anything (a number no task can mean)."""
    kind = type(value)
    if kind is int and not -_INT_LIMIT < value < _INT_LIMIT:
        return f"a number of more than {MAX_INT_DIGITS} digits is more than any field takes"
    if kind is float and (value == _INF or value == -_INF):
        return "the number is too large to be a number; write a smaller one"
    if kind is _BadNumber:
        return f"{value.text} is not a JSON value; write a number or a string"
    return None


def _first_problem(root: Any) -> tuple[Any, str] | None:
    """The first value nested too deep or no task can mean, with why; one pass, no recursion
    (depth is what is checked)."""
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return node, f"nested more than {MAX_DEPTH} levels deep; {FLATTEN}"
        for inner in node.values() if type(node) is dict else node:
            kind = type(inner)
            if kind is dict or kind is list:
                stack.append((inner, depth + 1))
            elif kind is not str:
                problem = _problem_of(inner)
                if problem is not None:
                    return inner, problem
    return None


def _path_to(node: Any, target: Any, path: str = "", depth: int = 0) -> str | None:
    """The field path of `target` (by identity) under `node`; only run to word an error."""
    if node is target:
        return path
    if depth > MAX_DEPTH:
        return None
    items: Any = ()
    if isinstance(node, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in node.items())
    elif isinstance(node, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(node))
    for where, inner in items:
        if inner is target or isinstance(inner, dict | list):
            found = _path_to(inner, target, where, depth + 1)
            if found is not None:
                return found
    return None


def _loads(text: str) -> Any:
    try:
        value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, ValueProblem):
        raise
    except ValueError:  # an integer past Python's own digit limit
        raise ValueProblem(
            f"a number of more than {MAX_INT_DIGITS} digits is more than any field takes; "
            "write a smaller number"
        ) from None
    if type(value) is dict or type(value) is list:
        found = _first_problem(value)
    else:
        problem = _problem_of(value)
        found = (value, problem) if problem else None
    if found is not None:
        bad, problem = found
        where = _path_to(value, bad)
        place = f"field {where[:80]!r}" if where else "the content"
        raise ValueProblem(f"{place}: {problem}")
    return value


def parse_content(text: str) -> dict[str, Any]:
    """One JSON object, order kept, the UI's trailing commas accepted."""
    try:
        # Plain JSON first (every file the bridge wrote): five times cheaper than the pass
        # that strips trailing commas, which only the UI's own files need.
        value = _loads(text)
    except json.JSONDecodeError:
        value = None
    except RecursionError:
        raise ParseError("not valid JSON: nested too deeply") from None
    try:
        if value is None:
            value = _loads(strip_trailing_commas(text))
    except json.JSONDecodeError as exc:
        raise ParseError(
            f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise ParseError("not valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise ParseError(f"the content must be one JSON object {{...}}, not {type(value).__name__}")
    return value


def owned_by_bridge(fields: Mapping[str, Any]) -> bool:
    """A file the bridge has taken carries its task-id and a known state."""
    state = fields.get(states.STATE)
    return (
        isinstance(fields.get(states.TASK_ID), str)
        and isinstance(state, str)
        and state in states.FILE_STATES
    )


def reserved_fields(fields: Mapping[str, Any]) -> list[str]:
    """Bridge fields present in a new file: the UI must not write them."""
    return [k for k in states.BRIDGE_FIELDS if k in states.OWNED_MARKERS and k in fields]


def merge(fields: Mapping[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    """The UI's fields in their order, then the bridge's; a None update removes a field."""
    out = dict(fields)
    for key, value in updates.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


PRETTY_CHECK_CHARS = 16384


def dump(fields: Mapping[str, Any]) -> bytes:
    """Strict JSON, UTF-8 (no \\u escapes), indented.

    Indenting every level multiplies deep nesting many times over (a 2 KB file of nested
    lists becomes megabytes): past twice the compact size, only the top level is indented.
    """
    text = _indented(fields)
    if len(text) > PRETTY_CHECK_CHARS:
        flat = _top_level_indented(fields)
        if len(text) > 2 * len(flat):
            text = flat
    # A lone surrogate (from a \\ud800 escape in the UI's JSON) is written back as that escape.
    return text.encode("utf-8", "backslashreplace")


_LITERALS = {None: "null", True: "true", False: "false"}
_string = json.encoder.encode_basestring  # json's own, in C: what ensure_ascii=False writes


def _indented(fields: Mapping[str, Any]) -> str:
    """`json.dumps(fields, ensure_ascii=False, indent=2, allow_nan=False)` and a newline, byte
    for byte, without json's indenting encoder, which is written in Python: the mirror writes
    thousands of files a second, mostly flat. Strings and integers are encoded by json's C
    functions; a nested value as json would at the top, its lines indented one level more (no
    line break can sit inside a JSON string)."""
    if not fields:
        return "{}\n"
    parts = []
    for key, value in fields.items():
        if type(key) is not str:  # json turns such keys into strings: its own way, then
            return json.dumps(fields, ensure_ascii=False, indent=2, allow_nan=False) + "\n"
        kind = type(value)
        if kind is str:
            text = _string(value)
        elif kind is int:
            text = int.__repr__(value)
        elif value is None or kind is bool:
            text = _LITERALS[value]
        else:
            text = json.dumps(value, ensure_ascii=False, indent=2, allow_nan=False)
            text = text.replace("\n", "\n  ")
        parts.append(f"  {_string(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _top_level_indented(fields: Mapping[str, Any]) -> str:
    lines = [
        f"  {json.dumps(key, ensure_ascii=False)}: "
        + json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        for key, value in fields.items()
    ]
    return "{\n" + ",\n".join(lines) + "\n}\n" if lines else "{}\n"
