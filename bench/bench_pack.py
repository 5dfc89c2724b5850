"""Benchmark: `tasks.pack.build_targz` against GNU `tar czf`, `tar | pigz -6` and stdlib tarfile.

Builds a seeded, mail-like corpus in a temp dir (RFC 5322 messages: plain and HTML bodies with
quoted replies and signatures, some CJK and Cyrillic, base64 attachments), warms the page cache,
then times every contender on the same files in this process and prints a table plus the goals.

    .venv/bin/python bench/bench_pack.py [--size-mb 200] [--repeat 3] [--levels 1,3]

Not a test: nothing here fails a build; read the figures.
"""

from __future__ import annotations

import argparse
import base64
import functools
import itertools
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.pack import Member, build_targz, file_member  # noqa: E402

SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
MB = 1_000_000

GOAL_VS_TAR = 10.0
GOAL_VS_PIGZ = 2.0
GOAL_SIZE = 1.10

# Common English words, most frequent first: drawn with Zipf weights, as real prose is.
_WORD_TEXT = (
    "the of and to a in is you that it he was for on are as with his they I at be this have "
    "from or one had by word but not what all were we when your can said there use an each "
    "which she do how their if will up other about out many then them these so some her would "
    "make like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part over "
    "new sound take only little work know place year live me back give most very after thing "
    "our just name good sentence man think say great where help through much before line right "
    "too mean old any same tell boy follow came want show also around form three small set put "
    "end does another well large must big even such because turn here why ask went men read "
    "need land different home us move try kind hand picture again change off play spell air "
    "away animal house point page letter mother answer found study still learn should America "
    "world meeting budget quarter invoice shipment contract customer report attached please "
    "review schedule project deadline approval regards thanks team office client order payment "
    "delivery account manager department update status issue request support product release "
    "server backup archive agreement draft proposal forecast revenue margin vendor purchase"
)
WORDS = _WORD_TEXT.split()
CJK = (
    "的一是在不了有和人這中大為上個國我以要他時來用們生到作地於出就分對成會可主發年動同工也能下過子"
    "說產種面而方後多定行學法所民得經十三之進著等部度家電力裡如水化高自二理起小物現實加量都兩體制機"
    "當使點從業本去把性好應開它合還因由其些然前外天政四日那社義事平形相全表間樣與關各重新線內數正心"
    "反你明看原又麼利比或但質氣第向道命此變條只沒結解問意建月公無系軍很情者最立代想已通並提直題程展"
    "會議報告附件請查收謝謝合約客戶訂單付款交貨帳戶經理部門更新狀態問題要求支援產品發佈伺服器備份"
)
_CYRILLIC_TEXT = (
    "и в не на я быть он с что а по это она этот к но они мы как из у который то за свой "
    "отчёт встреча договор счёт оплата клиент заказ поставка проект срок пожалуйста спасибо"
)
CYRILLIC = _CYRILLIC_TEXT.split()
PEOPLE = [
    ("Yuko Hamada", "yukoh"),
    ("Hank Chen", "hank"),
    ("陳大文", "tmchan"),
    ("王小明", "xiaoming"),
    ("Олег Петров", "oleg"),
    ("Marie Dubois", "marie"),
    ("Sales Team", "sales"),
    ("田中 太郎", "tanaka"),
    ("Priya Nair", "priya"),
    ("Carlos Mendes", "carlos"),
]
DOMAINS = ["mozart.example.com", "example.net", "partner.example.org", "mail.example.jp"]
DISCLAIMER = (
    "CONFIDENTIALITY NOTICE: This e-mail and any attachments are intended only for the named "
    "recipient(s) and may contain confidential or privileged information. If you are not the "
    "intended recipient, please notify the sender and delete this message. Any review, "
    "dissemination or copying of this message by anyone else is strictly prohibited."
)
# (extension, MIME type, incompressible?, relative weight): most mailed files are already
# compressed (PDF, JPEG, Office zip); some are text (CSV exports, logs).
ATTACHMENT_KINDS = [
    ("pdf", "application/pdf", True, 30),
    ("jpg", "image/jpeg", True, 25),
    ("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", True, 10),
    ("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", True, 5),
    ("png", "image/png", True, 5),
    ("csv", "text/csv", False, 12),
    ("log", "text/plain", False, 8),
    ("html", "text/html", False, 5),
]


@dataclass
class Composition:
    messages: int = 0
    shared_files: int = 0
    text_bytes: int = 0
    binary_attachment_bytes: int = 0
    text_attachment_bytes: int = 0
    total_bytes: int = 0


class MailMaker:
    """Deterministic mail-like messages from one seeded RNG."""

    def __init__(self, seed: int, attachments: bool) -> None:
        self.rng = random.Random(seed)
        self.attachments = attachments
        self.cum = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(WORDS))))
        self.cjk_cum = list(itertools.accumulate(1 / (rank + 1) ** 0.8 for rank in range(len(CJK))))
        self.composition = Composition()
        self.previous_body = ""

    def words(self, n: int) -> list[str]:
        return self.rng.choices(WORDS, cum_weights=self.cum, k=n)

    def paragraph(self, script: str) -> str:
        if script == "cjk":
            chars = self.rng.choices(CJK, cum_weights=self.cjk_cum, k=self.rng.randint(40, 220))
            return "。".join("".join(chars[i : i + 23]) for i in range(0, len(chars), 23)) + "。"
        if script == "cyrillic":
            return (
                " ".join(self.rng.choices(CYRILLIC, k=self.rng.randint(20, 90))).capitalize() + "."
            )
        sentences = []
        for _ in range(self.rng.randint(2, 7)):
            sentences.append(" ".join(self.words(self.rng.randint(5, 22))).capitalize() + ".")
        return " ".join(sentences)

    def body(self, script: str, sender: str) -> str:
        paragraphs = [self.paragraph(script) for _ in range(self.rng.randint(1, 8))]
        text = "\n\n".join(_wrap(p) for p in paragraphs)
        text += f"\n\n--\n{sender}\nMozart Trading Ltd. | +852 2345 6789\n\n{_wrap(DISCLAIMER)}\n"
        if self.previous_body and self.rng.random() < 0.5:
            # Replies quote the message before them, as real threads do.
            quoted = "\n".join("> " + line for line in self.previous_body.splitlines())
            text += f"\nOn an earlier day, someone wrote:\n{quoted}\n"
        self.previous_body = text[:20_000]
        return text

    def attachment(self) -> tuple[str, str, bytes, bool]:
        kinds = ATTACHMENT_KINDS
        ext, mime, binary, _ = self.rng.choices(kinds, weights=[k[3] for k in kinds])[0]
        size = int(min(6 * MB, max(2_000, self.rng.lognormvariate(math.log(60_000), 1.2))))
        if binary:
            data = self.rng.randbytes(size)
        else:
            rows: list[str] = []
            length = 0
            while length < size:
                row = [str(self.rng.randint(1, 99999)), *self.words(6), f"{self.rng.random():.2f}"]
                rows.append(",".join(row) + "\r\n")
                length += len(rows[-1])
            data = "".join(rows).encode()[:size]
        return f"{' '.join(self.words(2))}.{ext}", mime, data, binary

    def message(self, n: int, when: float) -> bytes:
        rng = self.rng
        sender, to = rng.sample(PEOPLE, 2)
        script = rng.choices(["latin", "cjk", "cyrillic"], weights=[80, 14, 6])[0]
        subject = self.paragraph(script)[:60].rstrip(". ")
        boundary = f"----=_Part_{n}_{rng.getrandbits(40)}"
        body = self.body(script, sender[0])
        lines = _headers(rng, n, when, sender, to, subject, boundary)
        parts = [_text_part(body, boundary), _html_part(body, boundary)]
        self.composition.text_bytes += 2 * len(body.encode())
        if self.attachments and rng.random() < 0.22:
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                parts.append(self._attachment_part(boundary))
        return ("\r\n".join(lines) + "\r\n\r\n" + "".join(parts) + f"--{boundary}--\r\n").encode()

    def _attachment_part(self, boundary: str) -> str:
        name, mime, data, binary = self.attachment()
        encoded = base64.encodebytes(data).decode().replace("\n", "\r\n")
        if binary:
            self.composition.binary_attachment_bytes += len(encoded)
        else:
            self.composition.text_attachment_bytes += len(encoded)
        disposition = Header(name, "utf-8").encode() if not name.isascii() else name
        return (
            f'--{boundary}\r\nContent-Type: {mime}; name="{disposition}"\r\n'
            f"Content-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="{disposition}"\r\n\r\n{encoded}'
        )


def _wrap(text: str, width: int = 76) -> str:
    lines, line = [], ""
    for word in text.split(" "):
        if line and len(line) + len(word) >= width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*lines, line])


def _address(person: tuple[str, str], domain: str) -> str:
    name = person[0] if person[0].isascii() else Header(person[0], "utf-8").encode()
    return f"{name} <{person[1]}@{domain}>"


def _headers(
    rng: random.Random,
    n: int,
    when: float,
    sender: tuple[str, str],
    to: tuple[str, str],
    subject: str,
    boundary: str,
) -> list[str]:
    domain = rng.choice(DOMAINS)
    date = format_datetime(_utc(when))
    received = [
        f"Received: from mx{rng.randint(1, 9)}.{rng.choice(DOMAINS)} "
        f"(mx.{domain} [10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}])"
        f"\r\n\tby mail.mozart.example.com with ESMTPS id {rng.getrandbits(48):x}; {date}"
        for _ in range(rng.randint(2, 4))
    ]
    encoded_subject = subject if subject.isascii() else Header(subject, "utf-8").encode()
    return [
        f"Return-Path: <{sender[1]}@{domain}>",
        *received,
        f"From: {_address(sender, domain)}",
        f"To: {_address(to, 'mozart.example.com')}",
        f"Subject: {'Re: ' if rng.random() < 0.4 else ''}{encoded_subject}",
        f"Date: {date}",
        f"Message-ID: <{rng.getrandbits(64):016x}.{n}@{domain}>",
        "MIME-Version: 1.0",
        "X-Mailer: Mozart Mail 7.2",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
    ]


def _utc(when: float) -> datetime:
    return datetime.fromtimestamp(when, UTC)


def _text_part(body: str, boundary: str) -> str:
    encoded = base64.encodebytes(body.encode()).decode() if not body.isascii() else body
    cte = "base64" if not body.isascii() else "7bit"
    return (
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n\r\n{encoded.replace(chr(10), chr(13) + chr(10))}\r\n"
    )


def _html_part(body: str, boundary: str) -> str:
    paragraphs = "".join(
        f'<p style="margin:0;font-family:Calibri,sans-serif;font-size:11pt">{p}</p>\n'
        for p in body.split("\n\n")
    )
    html = f'<html><head><meta charset="utf-8"></head><body>\n{paragraphs}</body></html>\n'
    encoded = base64.encodebytes(html.encode()).decode().replace("\n", "\r\n")
    return (
        f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\n{encoded}\r\n"
    )


def build_corpus(
    root: Path, size_mb: int, seed: int, attachments: bool, shared: bool
) -> Composition:
    """Write about `size_mb` MB of messages as <user>/_ARCHIVE_/<YYYYMMDD>/<id>.eml."""
    maker = MailMaker(seed, attachments)
    comp = maker.composition
    if shared and SHARED_CORPUS.is_dir():
        for path in sorted(p for p in SHARED_CORPUS.rglob("*") if p.is_file()):
            target = root / "shared" / path.relative_to(SHARED_CORPUS)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            comp.shared_files += 1
            comp.total_bytes += path.stat().st_size
    when = 1_500_000_000.0
    for n in itertools.count(1):
        if comp.total_bytes >= size_mb * MB:
            break
        when += maker.rng.expovariate(1 / 900)
        user = PEOPLE[n % 3][1]
        day = time.strftime("%Y%m%d", time.gmtime(when))
        folder = root / user / "_ARCHIVE_" / day
        folder.mkdir(parents=True, exist_ok=True)
        data = maker.message(n, when)
        (folder / f"A{n:07d}.eml").write_bytes(data)
        comp.messages += 1
        comp.total_bytes += len(data)
    return comp


# --- contenders --------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    seconds: list[float] = field(default_factory=list)
    out_bytes: int = 0
    ours: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def corpus_members(root: Path) -> list[Member]:
    members = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        relative = os.path.relpath(folder, root)
        for name in sorted(files):
            arcname = name if relative == "." else f"{relative}/{name}"
            members.append(file_member(Path(folder, name), arcname))
    return members


def run_ours(root: Path, out: Path, *, level: int, threads: int) -> None:
    members = corpus_members(root)
    rows = [{"id": m.arcname.rsplit("/", 1)[-1], "arcname": m.arcname} for m in members]
    build_targz(out, "corpus", members, rows, level=level, threads=threads)


def run_tar_czf(root: Path, out: Path) -> None:
    subprocess.run(["tar", "czf", str(out), "-C", str(root.parent), root.name], check=True)


def run_tar_pigz(root: Path, out: Path) -> None:
    with out.open("wb") as sink:
        tar = subprocess.Popen(
            ["tar", "cf", "-", "-C", str(root.parent), root.name], stdout=subprocess.PIPE
        )
        pigz = subprocess.run(["pigz", "-6"], stdin=tar.stdout, stdout=sink, check=True)
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or pigz.returncode != 0:
            raise RuntimeError("tar | pigz failed")


def run_stdlib(root: Path, out: Path) -> None:
    with tarfile.open(out, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT) as tar:
        tar.add(root, arcname=root.name)


def time_it(outcome: Outcome, action: Callable[[Path], None], out: Path, repeat: int) -> None:
    for _ in range(repeat):
        out.unlink(missing_ok=True)
        start = time.perf_counter()
        action(out)
        outcome.seconds.append(time.perf_counter() - start)
    outcome.out_bytes = out.stat().st_size


def warm_cache(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                while f.read(1 << 20):
                    pass


def memory_of_ours(root: Path, out: Path, level: int, threads: int) -> tuple[int, int, int | None]:
    """tracemalloc peak of one pack; RSS before and peak RSS of another (None: cannot reset)."""
    before = _status_bytes("VmRSS")
    try:
        # Writing 5 resets the high-water mark to the current RSS, so the peak is this pack's.
        Path("/proc/self/clear_refs").write_text("5")
        resettable = True
    except OSError:
        resettable = False
    run_ours(root, out, level=level, threads=threads)
    peak = _status_bytes("VmHWM") if resettable else None
    tracemalloc.start()
    run_ours(root, out, level=level, threads=threads)
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return traced, before, peak


def _status_bytes(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) * 1024
    return 0


# --- report ------------------------------------------------------------------------------------


def report(outcomes: list[Outcome], bytes_in: int) -> list[str]:
    by_name = {o.name: o for o in outcomes}
    tar_czf, pigz = by_name["tar czf (gzip -6)"], by_name["tar | pigz -6"]
    lines = [
        f"{'contender':<28}{'MB/s':>8}{'median s':>10}{'out MB':>9}{'out/in':>8}"
        f"{'size/tar':>9}{'x tar':>8}{'x pigz':>8}"
    ]
    for o in outcomes:
        lines.append(
            f"{o.name:<28}{bytes_in / o.median / MB:>8.1f}{o.median:>10.2f}{o.out_bytes / MB:>9.1f}"
            f"{o.out_bytes / bytes_in:>8.3f}{o.out_bytes / tar_czf.out_bytes:>9.3f}"
            f"{tar_czf.median / o.median:>8.2f}{pigz.median / o.median:>8.2f}"
        )
    lines.append("")
    for o in (o for o in outcomes if o.ours):
        checks = [
            (f">= {GOAL_VS_TAR:g}x tar czf", tar_czf.median / o.median >= GOAL_VS_TAR),
            (f">= {GOAL_VS_PIGZ:g}x pigz", pigz.median / o.median >= GOAL_VS_PIGZ),
            (f"size <= {GOAL_SIZE:.0%} of tar czf", o.out_bytes <= GOAL_SIZE * tar_czf.out_bytes),
        ]
        verdicts = "  ".join(f"{label}: {'PASS' if ok else 'FAIL'}" for label, ok in checks)
        lines.append(f"{o.name}: {verdicts}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, default=200, help="corpus size (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs each; median shown")
    parser.add_argument("--levels", default="1,3", help="ISA-L levels of ours (default 1,3)")
    parser.add_argument("--threads", default="1", help="compression threads of ours, e.g. 0,1,2")
    parser.add_argument("--seed", type=int, default=20171025)
    parser.add_argument(
        "--no-attachments",
        action="store_true",
        help="text-only messages: the worst case for a fast compressor's ratio",
    )
    parser.add_argument(
        "--no-shared-corpus",
        action="store_true",
        help=f"do not mix in the real messages of {SHARED_CORPUS}",
    )
    parser.add_argument("--skip-stdlib", action="store_true", help="skip the slow tarfile run")
    return parser.parse_args(argv)


def contenders(
    args: argparse.Namespace, root: Path
) -> Iterator[tuple[Outcome, Callable[[Path], None]]]:
    for level in (int(x) for x in args.levels.split(",")):
        for threads in (int(x) for x in args.threads.split(",")):
            name = f"ours isal L{level} t{threads}"
            action = functools.partial(run_ours, root, level=level, threads=threads)
            yield Outcome(name, ours=True), action
    yield Outcome("tar czf (gzip -6)"), functools.partial(run_tar_czf, root)
    yield Outcome("tar | pigz -6"), functools.partial(run_tar_pigz, root)
    if not args.skip_stdlib:
        yield Outcome("stdlib tarfile zlib 6"), functools.partial(run_stdlib, root)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-pack-") as tmp:
        root = Path(tmp) / "corpus"
        start = time.perf_counter()
        comp = build_corpus(
            root, args.size_mb, args.seed, not args.no_attachments, not args.no_shared_corpus
        )
        print_composition(comp, time.perf_counter() - start)
        warm_cache(root)
        out = Path(tmp) / "out.tar.gz"
        outcomes = []
        for outcome, action in contenders(args, root):
            time_it(outcome, action, out, args.repeat)
            outcomes.append(outcome)
            print(
                f"  {outcome.name}: {', '.join(f'{s:.2f}s' for s in outcome.seconds)}", flush=True
            )
        print()
        print("\n".join(report(outcomes, comp.total_bytes)))
        first = next(o for o in outcomes if o.ours)
        level, threads = (int(x) for x in first.name.split("L")[1].split(" t"))
        traced, before, peak = memory_of_ours(root, out, level, threads)
        check = subprocess.run(["gzip", "-t", str(out)], check=False).returncode == 0
        growth = f"{(peak - before) / MB:.1f} MB" if peak else "n/a"
        print(
            f"\n{first.name}: tracemalloc peak {traced / MB:.1f} MB; RSS {before / MB:.1f} MB "
            f"before, peak growth during the pack {growth}; gzip -t {'ok' if check else 'FAILED'}"
        )
        print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    return 0


def print_composition(comp: Composition, seconds: float) -> None:
    total = comp.total_bytes
    print(
        f"corpus: {total / MB:.1f} MB, {comp.messages} generated messages"
        f" + {comp.shared_files} real files from shared/corpus, built in {seconds:.1f}s"
    )
    print(
        f"  generated text/html parts {comp.text_bytes / total:.0%}, base64 attachments: "
        f"binary {comp.binary_attachment_bytes / total:.0%}, "
        f"text {comp.text_attachment_bytes / total:.0%} (share of corpus bytes)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
