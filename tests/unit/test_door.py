"""The task door's judging, writing and refusing, on generated paths, bodies and tokens, against
the real file system (no HTTP: `tests/e2e/test_door.py` runs it in a bridge)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge import contract
from bridge.judge import judge
from bridge.web.door import Door, Named, open_door
from taskd.settings import Settings, SettingsError
from taskd.tasktypes import load_types

TOKEN = "a-good-token-0123456789"
SUPPORT = Path(__file__).resolve().parents[1] / "support" / "schemas"


@pytest.fixture
def door(tmp_path: Path) -> Door:
    (tmp_path / "task_queue").mkdir()
    base = Settings.from_env({"TASKD_DATA_ROOT": str(tmp_path), "TASKD_HTTP_TOKEN": TOKEN})
    found = open_door(base, load_types([SUPPORT]))
    assert found is not None
    return found


def test_no_token_no_door(tmp_path: Path) -> None:
    base = Settings.from_env({"TASKD_DATA_ROOT": str(tmp_path)})
    assert open_door(base, {}) is None


@pytest.mark.parametrize(
    "token", ["short", "has a space in it 0123", "x" * 513, "tab\there-01234567"]
)
def test_a_weak_or_malformed_token_is_refused_at_start(tmp_path: Path, token: str) -> None:
    with pytest.raises(SettingsError, match="TASKD_HTTP_TOKEN must be 16 or more"):
        Settings.from_env({"TASKD_DATA_ROOT": str(tmp_path), "TASKD_HTTP_TOKEN": token})


def test_the_token_is_not_in_the_settings_repr(door: Door) -> None:
    assert TOKEN not in repr(door.settings)


@given(header=st.one_of(st.none(), st.text(max_size=80)))
@example(header=f"bearer  {TOKEN} ")
@example(header=f"Bearer {TOKEN}x")
@example(header=f"Basic {TOKEN}")
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_only_the_exact_bearer_token_opens(door: Door, header: str | None) -> None:
    opened = door.allowed(header, "127.0.0.1", "/api/tasks/u/x.SLOW")
    scheme, _, given_token = (header or "").partition(" ")
    assert opened == (scheme.lower() == "bearer" and given_token.strip() == TOKEN)
    assert door.allowed(f"Bearer {TOKEN}", "127.0.0.1", "/api/tasks/u/x.SLOW")


def test_refusals_are_logged_once_a_minute_per_client(
    door: Door, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(50):
        door.allowed("Bearer nope", "10.0.0.1", "/api/tasks/u/x.SLOW")
    door.allowed(None, "10.0.0.2", "/api/tasks/u/x.SLOW\n\x1b[2Jforged")
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2
    assert "\n" not in refusals[1] and "\x1b" not in refusals[1]


@given(path=st.text(max_size=60))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_path_names_a_task_or_says_why_not(door: Door, path: str) -> None:
    named = door.target("/api/tasks/" + path)
    if isinstance(named, Named):
        assert contract.USER_RE.fullmatch(named.user)
        assert f"{named.user}/{named.name.stem}.{named.name.type}" == path
    else:
        assert named[0] == 400 and "error" in json.loads(named[2])


BODIES = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda d: json.dumps(d).encode(),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["SLOW", "RETRMS", "X"])},
            optional={
                "steps": st.one_of(st.integers(-5, 20000), st.text(max_size=5)),
                "label": st.text(max_size=20),
                "job-id": st.text(max_size=5),
            },
        ),
    ),
)


@given(stem=st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True), body=BODIES)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150)
def test_a_file_is_written_whole_exactly_when_its_body_is_judged_good(
    door: Door, stem: str, body: bytes
) -> None:
    folder = door.settings.task_queue / "u1"
    name = contract.parse_name(("u1", f"{stem}.SLOW"))
    assert name is not None
    folder.mkdir(exist_ok=True)
    before = set(folder.iterdir())
    in_use = any(p.name.startswith((f"{stem}.", f"{stem}-")) for p in before)
    status, _, answer = door.post("u1", name, body)
    after = set(folder.iterdir())
    ok = judge(body, name, door.types, door.checker).ok
    if status == 201:
        assert ok and not in_use
        (new,) = after - before
        assert new.name == f"{stem}.SLOW" and new.read_bytes() == body
    else:
        assert after == before  # nothing written, no temp left
        assert status == (409 if ok and in_use else 422), answer
        assert json.loads(answer)["error"]


def test_a_link_in_the_user_folders_place_is_refused(door: Door, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (door.settings.task_queue / "u2").symlink_to(elsewhere)
    name = contract.parse_name(("u2", "a.SLOW"))
    assert name is not None
    status, _, _ = door.post("u2", name, b'{"type": "SLOW"}')
    assert status == 503 and list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("query", ["wait=-1", "wait=nan", "wait=301", "wait=", "x=1&wait=soon"])
def test_a_wait_that_is_not_seconds_is_refused(door: Door, query: str) -> None:
    name = contract.parse_name(("u1", "a.SLOW"))
    assert name is not None
    status, _, body = door.get("u1", name, query)
    assert status == 400 and "seconds from 0 to 300" in json.loads(body)["error"]
