"""A small sample archive, so `make run` shows the whole system working on a fresh machine.

Written only where no archive exists yet; the messages are made here, in a few charsets, as
both `.eml` day folders and an `.mbox` day file, with a group and labels.
"""

from __future__ import annotations

import json
from email.header import Header
from pathlib import Path

USER = "yukoh"
FOLDER = "_ARCHIVE_"


def _message(n: int, subject: str, charset: str, sender: str, body: str, day: str) -> bytes:
    encoded = Header(subject, charset).encode() if charset != "us-ascii" else subject
    date = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    head = (
        f"From: {sender}\r\nTo: yukoh@cellopoint.com\r\nSubject: {encoded}\r\n"
        f"Date: {date}T09:{n:02d}:00+08:00\r\nMessage-ID: <sample-{day}-{n}@example.com>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset={charset}\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return head.encode("ascii") + body.encode(charset) + b"\r\n"


SAMPLES = [
    ("A11111", "haha, the plan for A", "utf-8", "hank@cellopoint.com", "Plan A is on."),
    ("A22222", "haha 計劃進度", "big5", "mei@example.com.tw", "進度報告附上。"),
    ("A33333", "週報 haha", "utf-8", "lin@example.cn", "本週完成。"),
    ("A44444", "会議の件", "iso-2022-jp", "sato@example.jp", "明日の会議です。"),
    ("A55555", "quarterly numbers", "us-ascii", "cfo@example.com", "See the numbers."),
]


BULK = 20_000
"""Messages `make run`'s sample adds to the seed's day, so that its search takes long enough
for progress to be seen moving (in the file's name, on the page and in Flower)."""
BULK_BODY = "Minutes of the weekly meeting, kept for the archive. " * 16


def _bulk(eml_dir: Path, day: str) -> None:
    for n in range(BULK):
        subject, charset = (f"haha weekly {n}", "utf-8") if n % 8 == 0 else (f"週報 {n}", "big5")
        raw = _message(n % 60, subject, charset, "lin@example.cn", BULK_BODY, day)
        (eml_dir / f"B{n:06d}.eml").write_bytes(raw.replace(b"sample-", f"bulk{n}-".encode()))


def write_sample(mail_db: Path, bulk: bool = False) -> bool:
    """Create the sample user's archive under `mail_db` (with `bulk`, BULK more messages on the
    seed's day); False if that user has one already."""
    if (mail_db / USER).exists():
        return False
    day = "20171025"
    eml_dir = mail_db / USER / FOLDER / day
    eml_dir.mkdir(parents=True)
    for n, (mail_id, subject, charset, sender, body) in enumerate(SAMPLES, 1):
        (eml_dir / f"{mail_id}.eml").write_bytes(_message(n, subject, charset, sender, body, day))
    if bulk:
        _bulk(eml_dir, day)
    mbox_day = "20171026"
    with open(mail_db / USER / FOLDER / f"{mbox_day}.mbox", "wb") as mbox:
        for n in range(1, 4):
            mbox.write(b"From hank@cellopoint.com Thu Oct 26 09:00:00 2017\n")
            mbox.write(
                _message(
                    n,
                    f"haha mbox {n}",
                    "utf-8",
                    "hank@cellopoint.com",
                    "From the mbox day file.",
                    mbox_day,
                ).replace(b"\r\n", b"\n")
            )
            mbox.write(b"\n")
    groups = mail_db / "groups.json"
    if not groups.exists():
        groups.write_text(json.dumps({"sales": [USER]}))
    (mail_db / USER / "labels.json").write_text(json.dumps({"A11111": ["important"]}))
    return True
