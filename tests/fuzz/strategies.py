"""Hypothesis strategies for hostile task files: their names and their bytes.

Everything here is pure (no I/O): the state machine draws from these and writes the result.
Sizes are kept small on purpose: an oversize file is cheap because the fuzz bridge runs with a
4 KiB TASKD_MAX_TASK_BYTES, and every byte written is a byte the bridge may have to rewrite.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

MAX_TASK_BYTES = 4096
NAME_MAX = 255  # bytes, for one path component on Linux file systems

TYPES = ("SLOW", "PACKMS", "RETRMS")

# Characters that make names hostile without making them impossible (no "/" or NUL).
_WIDE = "éü日本語😀"
_TAIL = st.text(
    alphabet=st.sampled_from(list("abcxyz019_-. ~#") + list(_WIDE) + ["'", '"', "$", "%", "*"]),
    max_size=8,
)


@st.composite
def stems(draw: st.DrawFn, serial: int) -> str:
    """A fresh task-id: unique by its serial, decorated with hostile but legal characters."""
    tail = draw(_TAIL)
    # A tail that starts with "." or ends in "~"/"#" would make an editor file, not a task;
    # the serial goes first so the name never starts with one of the editor prefixes.
    return f"t{serial}{tail}".rstrip("~#") or f"t{serial}"


@st.composite
def long_stems(draw: st.DrawFn, serial: int, suffix: str) -> str:
    """A stem of 200-254 bytes, multi-byte UTF-8 mixed in, that still fits NAME_MAX whole."""
    budget = NAME_MAX - len(suffix.encode())
    target = draw(st.integers(min_value=min(200, budget - 8), max_value=min(254, budget)))
    head = f"L{serial}-"
    pieces = draw(st.lists(st.sampled_from(["a", "é", "日", "😀", "-", "_"]), min_size=80))
    out = head
    for piece in pieces * 8:
        if len((out + piece).encode()) > target:
            break
        out += piece
    while len(out.encode()) < target:
        out += "a"
    return out


@st.composite
def weird_stems(draw: st.DrawFn, serial: int) -> str:
    """Names that attack whoever prints them: newlines, ANSI escapes, carriage returns."""
    decoration = draw(
        st.sampled_from(
            [
                "\n",
                "\nERROR forged log line",
                "\x1b[31mred\x1b[0m",
                "\x1b]0;title\x07",
                "\r",
                "\t",
                "\u202egnp.",  # right-to-left override
                "\x7f",
            ]
        )
    )
    return f"w{serial}{decoration}"


def valid_slow() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"type": st.just("SLOW"), "steps": st.integers(0, 3)},
        optional={"step-seconds": st.sampled_from([0.01, 0.05]), "label": st.text(max_size=20)},
    )


def valid_retrms() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "type": st.just("RETRMS"),
            "criterion": st.fixed_dictionaries(
                {}, optional={"subject": st.text(max_size=10), "since": st.just("2017-10-25")}
            ),
        }
    )


def number_literals() -> st.SearchStrategy[str]:
    """JSON number texts that overflow, underflow or are not JSON at all."""
    return st.sampled_from(
        [
            "1e308",
            "1e999",
            "-1e999",
            "1" + "0" * 1000,  # 10**1000 as a literal
            "1" + "0" * 500,  # 10**500
            "-1",
            "1.5",
            "NaN",
            "Infinity",
            "-Infinity",
            "0.0000000000000000000000001",
            "1e-999",
        ]
    )


@st.composite
def overflow_documents(draw: st.DrawFn, task_type: str) -> bytes:
    """A task otherwise fine but for a hostile `delay`, `priority`, `steps`, `run-at`..."""
    pieces = _pieces(task_type)
    if draw(st.booleans()):
        pieces["run-at"] = draw(
            st.sampled_from(
                ['"99999-01-01T00:00:00Z"', '"garbage"', '"0001-01-01"', "12", '"2017-13-45"']
            )
        )
    else:
        field = draw(st.sampled_from(["delay", "priority", "steps", "progress", "step-seconds"]))
        pieces[field] = draw(number_literals())
    return _render(pieces)


def _pieces(task_type: str) -> dict[str, str]:
    """A valid object of each type as key -> JSON text, to splice hostile literals into."""
    if task_type == "SLOW":
        return {"type": '"SLOW"', "steps": "1", "step-seconds": "0.01"}
    if task_type == "RETRMS":
        return {"type": '"RETRMS"', "criterion": '{"subject": "x"}'}
    return {"type": '"PACKMS"', "files": "[]"}


def _render(pieces: dict[str, str]) -> bytes:
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in pieces.items()) + "}").encode()


def _base_text(task_type: str) -> str:
    return _render(_pieces(task_type)).decode()[1:-1]


@st.composite
def almost_json(draw: st.DrawFn, task_type: str) -> bytes:
    """A valid document, then one small edit: truncated, a byte dropped, doubled or swapped."""
    text = "{" + _base_text(task_type) + "}"
    cut = draw(st.integers(0, len(text) - 1))
    how = draw(st.sampled_from(["truncate", "drop", "double", "swap-quote", "bom", "comma"]))
    if how == "truncate":
        out = text[:cut]
    elif how == "drop":
        out = text[:cut] + text[cut + 1 :]
    elif how == "double":
        out = text[:cut] + text[cut] * 2 + text[cut + 1 :]
    elif how == "swap-quote":
        out = text.replace('"', "'", 1 + cut % 3)
    elif how == "bom":
        out = "\ufeff\ufeff" + text  # two BOMs: one is accepted, the second is not JSON
    else:
        out = text[:-1] + ",,}"
    return out.encode()


@st.composite
def duplicate_keys(draw: st.DrawFn, task_type: str) -> bytes:
    key = draw(st.sampled_from(["type", "state", "task-id", "steps", "job-id"]))
    values = draw(
        st.lists(
            st.sampled_from(['"SLOW"', '"PACKMS"', "1", '"QUEUED"', "null"]), min_size=2, max_size=3
        )
    )
    extra = ", ".join(f'"{key}": {v}' for v in values)
    return f"{{{_base_text(task_type)}, {extra}}}".encode()


@st.composite
def deep_nesting(draw: st.DrawFn, task_type: str) -> bytes:
    depth = draw(st.sampled_from([50, 400, 1000, 1500]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    nested = opener * depth + "1" + closer * depth
    if draw(st.booleans()):
        return nested.encode()  # not an object at all
    return f'{{{_base_text(task_type)}, "label-x": {nested}}}'.encode()


@st.composite
def oversized(draw: st.DrawFn, task_type: str) -> bytes:
    """Valid JSON just over the limit (or far over it): must be rejected, once."""
    size = draw(st.sampled_from([MAX_TASK_BYTES + 1, MAX_TASK_BYTES + 100, 3 * MAX_TASK_BYTES]))
    text = "{" + _base_text(task_type) + ', "pad": "'
    pad = draw(st.sampled_from(["x", '\\"', "é", "\\u0001"]))
    body = text + pad * (size // len(pad.encode()))
    return (body + '"}').encode()


def hostile_content(
    task_type: str, skip: set[str] | frozenset[str] = frozenset()
) -> st.SearchStrategy[bytes]:
    """Bytes a hostile or broken UI may leave as a task file (`skip` leaves families out)."""
    families = {
        "bytes": st.binary(max_size=200),
        "almost": almost_json(task_type),
        "bignum": overflow_documents(task_type),
        "dupkeys": duplicate_keys(task_type),
        "nesting": deep_nesting(task_type),
        "oversize": oversized(task_type),
        "tiny": st.sampled_from([b"", b"{}", b"[]", b"null", b'"x"', b"{\x00}", b"\xef\xbb\xbf{}"]),
    }
    return st.one_of([s for name, s in families.items() if name not in skip])


OTHER_JOB = "<a job-id of another task>"
OTHER_TASK = "<a task-id of another task>"


def forged_fields(task_type: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid-looking documents carrying fields only the bridge may write. OTHER_JOB and
    OTHER_TASK stand for ids of tasks that exist: the caller fills them in (the draw must not
    depend on the file system)."""
    base: dict[str, Any] = json.loads("{" + _base_text(task_type) + "}")
    task_ids = st.sampled_from(
        ["../x", "../../outside", "/etc/passwd", "a/b", "", "..", OTHER_TASK]
    )
    job_ids = st.one_of(st.just(OTHER_JOB), st.uuids().map(str))
    return st.fixed_dictionaries(
        {k: st.just(v) for k, v in base.items()},
        optional={
            "task-id": task_ids,
            "state": st.sampled_from(["QUEUED", "STARTED", "SUCCESS", "REJECTED", "BOGUS"]),
            "job-id": job_ids,
            "progress": st.sampled_from([1e308, -5, 2.5, 10**30, "50", None]),
            "queued-at": st.sampled_from(["2026-01-01T00:00:00Z", "never"]),
            "output": st.just("/etc/passwd"),
        },
    ).filter(lambda d: any(k in d for k in ("task-id", "state", "job-id", "progress")))
