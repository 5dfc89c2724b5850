"""The hostile fuzz's findings, one small deterministic case each, against the real bridge.

Each case asserts what the contract says should happen (docs/file-contract.md): a bad file
becomes REJECTED once, with an error naming the problem; links, FIFOs and folders are left
alone; nothing behind a link is read, packed or mailed; the bridge stays up and its log stays
clean. "The bridge has settled" is shown by probes: small tasks written after the case and
followed to SUCCESS, which takes the bridge through more passes and at least one rescan.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Drop
from tests.fuzz import strategies as fs
from tests.fuzz.harness import (
    ERR_PART,
    REJECT_AFTER_S,
    RESCAN_S,
    SETTLE_S,
    Canaries,
    FuzzBridge,
    identity,
    log_problems,
    scan_token,
)
from tests.support.procs import Worker, wait_until
from tests.support.smtp import SmtpServer

_users = itertools.count(1)
_probes = itertools.count(1)


@dataclass
class Lab:
    drop: Drop
    bridge: FuzzBridge
    canaries: Canaries
    smtp: SmtpServer
    data_root: Path
    log_offset: int

    def settle(self) -> None:
        """Two probes, one after the other, followed to SUCCESS: by then the bridge has
        answered what was written before them and has rescanned at least once."""
        for _ in range(2):
            probe = f"probe{next(_probes)}"
            self.drop.write(f"{probe}.SLOW", {"type": "SLOW", "steps": 0})
            self.drop.wait_state(probe, "SUCCESS", timeout=20)
        assert self.bridge.exited() is None, self.log()

    def log(self) -> str:
        return self.bridge.log_bytes(self.log_offset).decode(errors="replace")

    def clean_log(self, names: dict[str, str] | None = None) -> None:
        problems = log_problems(self.bridge.log_bytes(self.log_offset), names or {}, 0)
        assert not problems, problems

    def names(self) -> list[str]:
        return sorted(os.listdir(self.drop.dir))

    def files_of(self, task_id: str) -> list[tuple[str, dict]]:
        """Every file in the user's folder whose content says it is `task_id`."""
        out = []
        for name in self.names():
            path = self.drop.dir / name
            if path.is_symlink() or not path.is_file():
                continue
            try:
                fields = json.loads(path.read_bytes())
            except ValueError:
                continue
            if isinstance(fields, dict) and fields.get("task-id") == task_id:
                out.append((name, fields))
        return out

    def no_nesting(self) -> None:
        nested = [n for n in self.names() if len(ERR_PART.findall(n)) > 1]
        assert not nested, f"names nest: {nested[:3]}"


@pytest.fixture
def lab(
    request: pytest.FixtureRequest,
    env: dict[str, str],
    data_root: Path,
    worker: Worker,
    smtp_server: SmtpServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Lab]:
    fuzz_env = {
        **env,
        "TASKD_MAX_TASK_BYTES": str(fs.MAX_TASK_BYTES),
        "TASKD_SETTLE": str(SETTLE_S),
        "TASKD_REJECT_AFTER": str(REJECT_AFTER_S),
        "TASKD_RESCAN_INTERVAL": str(RESCAN_S),
    }
    safe = "".join(c if c.isalnum() or c in "-_[]" else "_" for c in request.node.name[:60])
    log = data_root / f"bridge-fuzzcase-{safe}.log"
    bridge = FuzzBridge(fuzz_env, log)
    offset = bridge.log_size()
    drop = Drop(data_root, f"fzc{next(_users)}")
    canaries = Canaries(tmp_path_factory.mktemp("fuzzcase-outside"))
    bridge.start()
    yield Lab(drop, bridge, canaries, smtp_server, data_root, offset)
    bridge.stop()
    # A file this case left looping (x-ERR-ERR...) would poison the bridge of every later case
    # on the shared data root: the case's folder goes with it.
    shutil.rmtree(drop.dir, ignore_errors=True)


def _rejected(lab: Lab, task_id: str, *words: str) -> dict:
    fields = lab.drop.wait_state(task_id, "REJECTED", timeout=10)
    for word in words:
        assert word in fields["error"], fields["error"]
    return fields


def test_an_oversized_file_is_rejected_once_and_its_name_never_nests(lab: Lab) -> None:
    pad = "x" * (fs.MAX_TASK_BYTES + 100)
    lab.drop.write("big.SLOW", {"type": "SLOW", "steps": 0, "pad": pad})
    _rejected(lab, "big", "over the limit")
    lab.settle()
    lab.no_nesting()
    assert [n for n, _ in lab.files_of("big")] == ["big-ERR.SLOW"], lab.names()
    size = (lab.drop.dir / "big-ERR.SLOW").stat().st_size
    assert size < 2 * fs.MAX_TASK_BYTES + 4096, size
    lab.clean_log({"big.SLOW": "task_id=big "})


@pytest.mark.parametrize(
    ("field", "literal"),
    [
        ("delay", "1e999"),
        ("delay", "-1e999"),
        ("delay", "1" + "0" * 1000),
        ("delay", "NaN"),
        ("delay", "Infinity"),
        ("delay", "-1"),
        ("priority", "1" + "0" * 500),
        ("run-at", '"99999-01-01T00:00:00Z"'),
        ("run-at", '"garbage"'),
    ],
    ids=[
        "1e999",
        "-1e999",
        "10**1000",
        "NaN",
        "Infinity",
        "-1",
        "priority-10**500",
        "y99999",
        "garbage",
    ],
)
def test_numbers_that_overflow_are_rejected_naming_the_field(
    lab: Lab, field: str, literal: str
) -> None:
    lab.drop.write("num.SLOW", f'{{"type": "SLOW", "steps": 0, "{field}": {literal}}}')
    fields = _rejected(lab, "num")
    assert field in fields["error"] or "JSON" in fields["error"], fields["error"]
    lab.settle()
    lab.no_nesting()
    lab.clean_log()


def test_a_huge_but_finite_delay_waits_and_never_crashes_the_bridge(lab: Lab) -> None:
    lab.drop.write("far.SLOW", '{"type": "SLOW", "steps": 0, "delay": 1e308}')
    fields = lab.drop.wait_state("far", {"QUEUED", "REJECTED"}, timeout=10)
    lab.settle()
    assert lab.drop.fields("far")["state"] == fields["state"] != "SUCCESS"
    lab.clean_log()


@pytest.mark.parametrize("forged", ["../x", "../../outside", "a/b", "someone-else"])
def test_a_forged_task_id_is_rejected(lab: Lab, forged: str) -> None:
    content = {"type": "SLOW", "steps": 0, "task-id": forged, "state": "QUEUED"}
    content["job-id"] = str(uuid.uuid4())
    lab.drop.write("forge.SLOW", content)
    lab.settle()
    path = lab.drop.dir / "forge.SLOW"
    renamed = lab.drop.dir / "forge-ERR.SLOW"
    kept = renamed if renamed.exists() else path
    fields = json.loads(kept.read_bytes())
    assert fields["state"] == "REJECTED" and "task-id" in fields.get("error", ""), (kept, fields)
    assert set(os.listdir(lab.drop.dir.parent)) >= {lab.drop.user}
    assert not (lab.data_root / "task_queue" / "x-ERR.SLOW").exists()
    lab.clean_log()


def test_a_job_id_copied_from_another_users_task_is_rejected(lab: Lab, data_root: Path) -> None:
    other = Drop(data_root, f"fzc{next(_users)}")
    listed = data_root / "files" / f"{other.user}.txt"
    listed.write_text("theirs\n")
    other.write(
        "theirs.PACKMS", {"type": "PACKMS", "description": "theirs", "files": [str(listed)]}
    )
    done = other.wait_state("theirs", "SUCCESS", timeout=30)
    content = {"type": "PACKMS", "files": [str(listed)], "task-id": "mine", "state": "QUEUED"}
    lab.drop.write("mine.PACKMS", {**content, "job-id": done["job-id"]})
    lab.settle()
    shown = [f for _, f in lab.files_of("mine")]
    assert shown and all(f["state"] == "REJECTED" for f in shown), shown
    assert all(f.get("output") != done["output"] for f in shown), shown
    lab.clean_log()


@pytest.mark.parametrize("task_type", ["SLOW", "PACKMS"])
def test_a_task_id_used_again_while_its_file_exists_is_rejected(
    lab: Lab, data_root: Path, task_type: str
) -> None:
    listed = data_root / "files" / f"{lab.drop.user}.txt"
    listed.write_text("again\n")
    content = (
        {"type": "SLOW", "steps": 0}
        if task_type == "SLOW"
        else {"type": "PACKMS", "files": [str(listed)]}
    )
    lab.drop.write(f"again.{task_type}", content)
    lab.drop.wait_state("again", "SUCCESS", timeout=30)
    lab.drop.write(f"again.{task_type}", content)
    lab.settle()
    states = sorted(f["state"] for _, f in lab.files_of("again"))
    assert states == ["REJECTED", "SUCCESS"], (states, lab.names())
    rejected = next(f for _, f in lab.files_of("again") if f["state"] == "REJECTED")
    assert "already used" in rejected["error"], rejected
    lab.clean_log({f"again.{task_type}": "task_id=again "})


@pytest.mark.parametrize("stem_bytes", [200, 240, 249])
def test_a_name_too_long_to_rename_is_rejected_and_not_retried_for_ever(
    lab: Lab, stem_bytes: int
) -> None:
    stem = "L" + "é" * ((stem_bytes - 1) // 2)
    stem += "a" * (stem_bytes - len(stem.encode()))
    name = f"{stem}.SLOW"
    lab.drop.write(name, {"type": "SLOW", "steps": 0})
    lab.settle()
    answered = lab.files_of(stem)
    assert answered, f"{name!r} never answered; files: {lab.names()}"
    assert all(f["state"] in ("SUCCESS", "REJECTED") for _, f in answered), answered
    for _, fields in answered:
        if fields["state"] == "REJECTED":
            assert "name" in fields["error"], fields
    lab.clean_log({name: f"task_id={stem} "})


def test_links_fifos_and_folders_with_task_names_are_left_alone(lab: Lab) -> None:
    d = lab.drop.dir
    (d / "link.SLOW").symlink_to(lab.canaries.task)
    (d / "dangling.SLOW").symlink_to("/nonexistent/x.SLOW")
    os.mkfifo(d / "pipe.SLOW")
    (d / "folder.PACKMS").mkdir()
    (d / "notes.slow").write_text('{"type": "SLOW"}')
    before = {n: identity(d / n) for n in lab.names()}
    lab.settle()
    after = {n: identity(d / n) for n in before}
    assert after == before
    assert not scan_token(lab.canaries.token, [d])
    assert not lab.canaries.untouched()
    lab.clean_log()


def test_a_notify_mail_that_is_a_symlink_is_never_sent(lab: Lab) -> None:
    d = lab.drop.dir
    (d / "n.notify.eml").symlink_to(lab.canaries.mail)
    lab.drop.write("n.SLOW", {"type": "SLOW", "steps": 0, "notify": ["fzc@fuzz.example"]})
    lab.drop.wait_state("n", "SUCCESS", timeout=20)
    lab.settle()
    token = lab.canaries.token.encode()
    with lab.smtp.handler.lock:
        leaked = [m.recipients for m in lab.smtp.handler.received if token in m.data]
    assert not leaked, f"mailed the file behind the link to {leaked}"
    assert not lab.canaries.untouched()
    lab.clean_log()


@pytest.mark.parametrize("how", ["outside", "link-inside", "dotdot", "swapped-folder"])
def test_packms_never_packs_a_file_outside_the_allowed_roots(
    lab: Lab, data_root: Path, how: str
) -> None:
    mine = data_root / "files" / lab.drop.user
    mine.mkdir(parents=True)
    (mine / "link.txt").symlink_to(lab.canaries.text)
    (mine / "sub").symlink_to(lab.canaries.folder)
    listed = {
        "outside": str(lab.canaries.text),
        "link-inside": str(mine / "link.txt"),
        "dotdot": f"{mine}/../../../{lab.canaries.outside.name}/canary.txt",
        "swapped-folder": str(mine / "sub" / "a.txt"),
    }[how]
    lab.drop.write("pk.PACKMS", {"type": "PACKMS", "description": "pk", "files": [listed] * 5})
    fields = lab.drop.wait_state("pk", {"SUCCESS", "FAILURE"}, timeout=30)
    assert fields["state"] == "FAILURE" and "outside" in fields["error"], fields
    downloads = [data_root / "download" / lab.drop.user, lab.drop.dir]
    assert not scan_token(lab.canaries.token, downloads)
    lab.clean_log()


@pytest.mark.parametrize(
    "stem", ["esc\x1b[31mred\x1b[0m", "nl\nERROR forged line", "cr\rx"], ids=["ansi", "nl", "cr"]
)
def test_a_hostile_name_is_answered_and_cannot_forge_log_lines(lab: Lab, stem: str) -> None:
    lab.drop.write(f"{stem}.SLOW", {"type": "SLOW", "steps": 0})
    wait_until(lambda: lab.files_of(stem), 10, what=f"{stem!r}.SLOW to be taken or rejected")
    lab.settle()
    lab.clean_log()
