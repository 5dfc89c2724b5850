"""The notify task body against a real SMTP server: what it reads, and whom it can reach.

The mail file sits in the user's own folder, so it is read only as a regular file there (never
through a link, never blocking on a FIFO); addresses with non-ASCII characters go out with
SMTPUTF8 when the server offers it, and are named one by one when it does not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from taskd.settings import Settings
from tasks import notify
from tasks.base import Job
from tasks.errors import TaskFailed
from tests.support.procs import free_port
from tests.support.smtp import Handler

MAIL = b"From: ui@example.com\nTo: owner@example.com\nSubject: done\n\nYour task is done.\n"


class Server:
    def __init__(self, utf8: bool) -> None:
        self.handler = Handler()
        self.port = free_port()
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=utf8
        )

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}?timeout=5"


@pytest.fixture(params=[True, False], ids=["SMTPUTF8", "no SMTPUTF8"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    server = Server(utf8=request.param)
    server.controller.start()
    yield server
    server.controller.stop()


@pytest.fixture
def plain_server() -> Iterator[Server]:
    server = Server(utf8=False)
    server.controller.start()
    yield server
    server.controller.stop()


def _job(tmp_path: Path, url: str, notify_list: list[str], **settings: Any) -> Job:
    (tmp_path / "task_queue" / "7").mkdir(parents=True, exist_ok=True)
    return Job(
        job_id="notify-job-1",
        type="NOTIFY",
        user_id="7",
        task_id="t1",
        fields={"notify": notify_list},
        settings=Settings(data_root=tmp_path, smtp_url=url, **settings),
        progress=lambda *a, **k: None,
        extra={"task": {"task-id": "t1", "state": "SUCCESS", "job-id": "task-job-1"}},
    )


def _mail_path(tmp_path: Path) -> Path:
    return tmp_path / "task_queue" / "7" / "t1.notify.eml"


# --- what is read ------------------------------------------------------------------------------


def test_a_mail_file_that_is_a_hard_link_is_not_sent(tmp_path: Path, plain_server: Server) -> None:
    secret = tmp_path / "elsewhere.eml"
    secret.write_bytes(MAIL.replace(b"Your task is done.", b"SECRET"))
    _mail_path(tmp_path).parent.mkdir(parents=True)
    os.link(secret, _mail_path(tmp_path))
    job = _job(tmp_path, plain_server.url, ["a@example.com"])
    with pytest.raises(TaskFailed, match="t1.notify.eml is a hard link to another file"):
        notify.run.run(job)
    assert plain_server.handler.received == []


def test_a_mail_file_that_is_a_symlink_is_not_followed_or_sent(
    tmp_path: Path, plain_server: Server
) -> None:
    secret = tmp_path / "elsewhere.eml"
    secret.write_bytes(MAIL.replace(b"Your task is done.", b"SECRET"))
    _mail_path(tmp_path).parent.mkdir(parents=True)
    _mail_path(tmp_path).symlink_to(secret)
    job = _job(tmp_path, plain_server.url, ["a@example.com"])
    with pytest.raises(TaskFailed, match="t1.notify.eml is a symbolic link; nothing was sent"):
        notify.run.run(job)
    assert plain_server.handler.received == []
    assert _mail_path(tmp_path).is_symlink()  # left for ops to look at, as other failures are


@pytest.mark.parametrize("kind", ["FIFO", "folder"])
def test_a_fifo_or_folder_in_place_of_the_mail_fails_at_once(
    tmp_path: Path, plain_server: Server, kind: str
) -> None:
    path = _mail_path(tmp_path)
    path.parent.mkdir(parents=True)
    if kind == "FIFO":
        os.mkfifo(path)  # a plain open would wait here for a writer that never comes
    else:
        path.mkdir()
    job = _job(tmp_path, plain_server.url, ["a@example.com"])
    with pytest.raises(TaskFailed, match=f"not a regular file \\(a {kind}\\); nothing was sent"):
        notify.run.run(job)
    assert plain_server.handler.received == []


def test_a_mail_over_the_size_limit_is_not_sent(tmp_path: Path, plain_server: Server) -> None:
    job = _job(tmp_path, plain_server.url, ["a@example.com"], max_notify_bytes=len(MAIL) - 1)
    _mail_path(tmp_path).write_bytes(MAIL)
    with pytest.raises(TaskFailed, match="larger than .* TASKD_MAX_NOTIFY_BYTES"):
        notify.run.run(job)
    assert plain_server.handler.received == []


def test_the_sent_marker_is_written_whole_and_never_through_a_planted_link(
    tmp_path: Path, plain_server: Server
) -> None:
    job = _job(tmp_path, plain_server.url, ["a@example.com"])
    _mail_path(tmp_path).write_bytes(MAIL)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    folder = _mail_path(tmp_path).parent
    (folder / ".t1.notify.sent.tmp").symlink_to(victim)
    result = notify.run.run(job)
    assert result["sent-to"] == ["a@example.com"] and not _mail_path(tmp_path).exists()
    assert victim.read_text() == "keep me"
    marker = folder / ".t1.notify.sent"
    assert json.loads(marker.read_text())["job-id"] == "task-job-1"
    # Temp names are random: the planted name is never written, through or over.
    assert sorted(p.name for p in folder.iterdir()) == [".t1.notify.sent", ".t1.notify.sent.tmp"]
    assert (folder / ".t1.notify.sent.tmp").is_symlink()


def test_a_fifo_planted_as_the_sent_marker_does_not_hang_the_task(
    tmp_path: Path, plain_server: Server
) -> None:
    job = _job(tmp_path, plain_server.url, ["a@example.com"])
    os.mkfifo(_mail_path(tmp_path).parent / ".t1.notify.sent")
    with pytest.raises(TaskFailed, match="is gone; nothing to send"):
        notify.run.run(job)


# --- whom it can reach -------------------------------------------------------------------------


def test_non_ascii_addresses_go_out_with_smtputf8_or_are_named_one_by_one(
    tmp_path: Path, server: Server
) -> None:
    utf8 = server.controller.SMTP_kwargs.get("enable_SMTPUTF8", False)
    names = ["jörg@exämple.org", "用户@例子.广告", "hans@exämple.org", "plain@example.org"]
    job = _job(tmp_path, server.url, names)
    _mail_path(tmp_path).write_bytes(MAIL)
    result = notify.run.run(job)
    (got,) = server.handler.received
    if utf8:
        assert result["sent-to"] == names and result["notify-error"] is None
        assert got.recipients == names
        return
    # Without SMTPUTF8 a non-ASCII domain still goes out in its IDNA form; a non-ASCII local
    # part cannot, and only that address is named.
    assert result["sent-to"] == ["hans@exämple.org", "plain@example.org"]
    assert got.recipients == ["hans@xn--exmple-cua.org", "plain@example.org"]
    error = result["notify-error"]
    assert "jörg@exämple.org: not sent" in error and "用户@例子.广告: not sent" in error
    assert "SMTPUTF8" in error and "internal error" not in error
    assert not _mail_path(tmp_path).exists()


def test_only_non_ascii_recipients_and_no_smtputf8_sends_nothing_and_says_why(
    tmp_path: Path, plain_server: Server
) -> None:
    job = _job(tmp_path, plain_server.url, ["jörg@exämple.org"])
    _mail_path(tmp_path).write_bytes(MAIL)
    result = notify.run.run(job)
    assert result["sent-to"] == [] and plain_server.handler.received == []
    assert result["notify-error"].startswith("jörg@exämple.org: not sent")


def test_a_long_notify_list_with_repeats_is_deduplicated_in_order() -> None:
    entries = [f"u{n % 500}@example.com" for n in range(50_000)]
    good, bad = notify.split_recipients(entries)
    assert good == [f"u{n}@example.com" for n in range(500)] and bad == []
