"""Benchmark: peak memory of our search and of `tasks.pack.build_targz` as the archive grows.

For each size it builds the archive of `bench_retrms.py` (seeded; real messages of
`../shared/corpus` mixed in when there), then measures, each in a fresh interpreter so that no
memory freed earlier hides a peak: a subject search, a body search and a listing of everything
(results streamed away, as RETRMS writes them to its result set), and packing every mail of the
archive into a `.tar.gz` as PACKMS does.  It prints the tracemalloc peak and the RSS growth of
each, in a table, to show whether the peak grows with the archive.

    .venv/bin/python bench/bench_memory.py [--sizes 50,200,400,400:20000]

A size is `MB` (about 100 messages per MB) or `MB:MESSAGES`; the default's last row has the
200 MB row's message count at twice its bytes, to tell growth with bytes from growth with files.
Not a test: nothing here fails a build; read the figures.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_retrms import NEEDLES, build_archive, forget_splits, warm_cache  # noqa: E402

from tasks.mailstore import Criterion, FileMailStore, MailSummary, search  # noqa: E402
from tasks.pack import Member, build_targz  # noqa: E402

MB = 1_000_000
MESSAGES_PER_MB = 100
DEFAULT_SIZES = "50,200,400,400:20000"


@dataclass(frozen=True)
class Measure:
    """One measurement in a fresh interpreter."""

    traced: int
    """tracemalloc peak of one run."""
    rss_before: int
    rss_growth: int | None
    """Peak RSS of another run above the RSS before it (None: the kernel cannot tell)."""
    seconds: float
    result: int
    """Matches found, or bytes written by the pack."""


# --- the measuring child -----------------------------------------------------------------------


def _status_bytes(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(action: Callable[[], int]) -> Measure:
    """RSS growth of one run of `action`, then the tracemalloc peak of a second."""
    rss_before = _status_bytes("VmRSS")
    try:
        # Writing 5 resets the high-water mark to the current RSS, so the peak is this run's.
        Path("/proc/self/clear_refs").write_text("5")
        resettable = True
    except OSError:
        resettable = False
    start = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - start
    growth = _status_bytes("VmHWM") - rss_before if resettable else None
    tracemalloc.start()
    action()
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return Measure(traced, rss_before, growth, seconds, result)


def streamed_search(root: Path, query: dict[str, object], index: Path | None = None) -> int:
    forget_splits()
    criterion = Criterion.from_json(query)
    store = FileMailStore(root, index)
    return sum(1 for _ in search(store, criterion, lambda done, total: None))


def pack_all(root: Path, out: Path) -> int:
    """Pack every mail of the archive as PACKMS does: its mails read twice as a stream (sizes,
    then members with their index rows), nothing listed ahead."""
    forget_splits()
    out.unlink(missing_ok=True)
    store = FileMailStore(root)

    def mails() -> Iterator[MailSummary]:
        return search(store, Criterion(), lambda done, total: None)

    total = sum(mail.size for mail in mails())

    def members() -> Iterator[Member]:
        for mail in mails():
            message = store.message(mail.user, mail.id, mail.folder, mail.day)
            row = mail.to_json()
            yield Member(f"mails/{mail.id}.eml", message.raw_size, message.open, row=row)

    result = build_targz(
        out, "archive", members(), None, None, total, with_index=True, keep_names=False
    )
    return result.bytes_out


def child(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if args.measure == "pack":
        out = Path(args.out)
        result = measure(lambda: pack_all(root, out))
        out.unlink(missing_ok=True)
    else:
        query = json.loads(args.query)
        index = Path(args.index) if args.index else None
        if index is not None:
            streamed_search(root, query, index)  # fill the header cache first, unmeasured
        result = measure(lambda: streamed_search(root, query, index))
    print(json.dumps(result.__dict__))
    return 0


def run_child(*options: str) -> Measure:
    """Measure in a fresh interpreter: its RSS starts where a new worker's would."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *options],
        capture_output=True,
        text=True,
        check=True,
    )
    return Measure(**json.loads(done.stdout.splitlines()[-1]))


# --- the table ---------------------------------------------------------------------------------


@dataclass
class Row:
    size_mb: float
    messages: int
    archive_bytes: int
    files: int
    measures: dict[str, Measure]


def measure_archive(root: Path, needle: str, body: bool, out: Path) -> dict[str, Measure]:
    warm_cache(root)
    queries: dict[str, dict[str, object]] = {"subject": {"subject": needle}, "listing": {}}
    if body:
        queries["body"] = {"body": needle}
    measures = {
        name: run_child("--measure", "search", "--root", str(root), "--query", json.dumps(query))
        for name, query in queries.items()
    }
    subject = json.dumps(queries["subject"])
    index = str(out.with_name("mail-index"))
    measures["subject, cached"] = run_child(
        "--measure", "search", "--root", str(root), "--query", subject, "--index", index
    )
    measures["pack"] = run_child("--measure", "pack", "--root", str(root), "--out", str(out))
    return measures


def measure_size(size_mb: float, messages: int, args: argparse.Namespace) -> Row:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        root = Path(tmp) / "mail_db"
        archive = build_archive(
            root, messages, size_mb, args.seed, NEEDLES, not args.no_shared_corpus
        )
        measures = measure_archive(root, args.needle, not args.skip_body, Path(tmp) / "out.tgz")
    row = Row(size_mb, messages, archive.bytes, archive.files, measures)
    print(f"  {archive.bytes / MB:.0f} MB, {archive.files} files: {_brief(measures)}", flush=True)
    return row


def write_big_message(root: Path, attachment_mb: float, seed: int, needle: str) -> int:
    """One mail with a text part holding the needle and one big base64 attachment."""
    folder = root / "yukoh" / "_ARCHIVE_" / "20171025"
    folder.mkdir(parents=True)
    data = random.Random(seed).randbytes(int(attachment_mb * MB))
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    head = (
        "From: Hank Chen <hank@example.net>\r\nTo: yukoh@mozart.example.com\r\n"
        f"Subject: the scans, {needle}\r\nDate: Wed, 25 Oct 2017 09:00:00 +0800\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        f"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nScans attached, {needle}.\r\n"
        "--b1\r\nContent-Type: application/pdf; name=scans.pdf\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="scans.pdf"\r\n\r\n'
    )
    message = head.encode() + encoded + b"--b1--\r\n"
    (folder / "BIG0001.eml").write_bytes(message)
    return len(message)


def measure_big_message(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        root = Path(tmp) / "mail_db"
        size = write_big_message(root, args.big_message_mb, args.seed, args.needle)
        measures = measure_archive(root, args.needle, not args.skip_body, Path(tmp) / "out.tgz")
    cells = ", ".join(
        f"{name} {_mb(m.traced)} / {_mb(m.rss_growth)}" for name, m in measures.items()
    )
    return (
        f"one message of {size / MB:.1f} MB ({args.big_message_mb:g} MB attachment), "
        f"peak MB (tracemalloc / RSS growth): {cells}"
    )


def _brief(measures: dict[str, Measure]) -> str:
    return ", ".join(f"{name} {m.seconds:.1f}s" for name, m in measures.items())


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MB:.1f}"


def table(rows: list[Row]) -> list[str]:
    names = list(rows[0].measures)
    lines = [
        "peak memory, MB: tracemalloc peak / RSS growth, each in a fresh interpreter",
        f"{'archive MB':>10}{'files':>8}{'messages':>10}" + "".join(f"{n:>16}" for n in names),
    ]
    for row in rows:
        cells = "".join(
            f"{_mb(m.traced) + ' / ' + _mb(m.rss_growth):>16}" for m in row.measures.values()
        )
        lines.append(f"{row.archive_bytes / MB:>10.0f}{row.files:>8}{row.messages:>10}{cells}")
    seconds = [
        f"{'':>28}" + "".join(f"{m.seconds:>15.1f}s" for m in row.measures.values()) for row in rows
    ]
    return [*lines, "", "one run, seconds (without tracemalloc):", *seconds]


def growth_lines(rows: list[Row]) -> list[str]:
    """How each peak changes with the archive's files, and with its bytes at equal messages."""
    fewest = min(rows, key=lambda r: r.files)
    most = max(rows, key=lambda r: (r.files, r.archive_bytes))
    pairs = [
        (a, b) for a in rows for b in rows if a.messages == b.messages and b.size_mb > a.size_mb
    ]
    lines = []
    for name in fewest.measures:
        low, high = fewest.measures[name].traced, most.measures[name].traced
        text = (
            f"{name}: {low / MB:.1f} -> {high / MB:.1f} MB from {fewest.files} to {most.files} "
            f"files ({(high - low) / max(1, most.files - fewest.files):.0f} B per extra file)"
        )
        for a, b in pairs[:1]:
            before, after = a.measures[name].traced, b.measures[name].traced
            text += (
                f"; {before / MB:.1f} -> {after / MB:.1f} MB from {a.archive_bytes / MB:.0f} "
                f"to {b.archive_bytes / MB:.0f} MB at {a.messages} messages"
            )
        lines.append(text)
    return lines


def parse_sizes(text: str) -> list[tuple[float, int]]:
    sizes = []
    for item in text.split(","):
        size, _, messages = item.partition(":")
        mb = float(size)
        sizes.append((mb, int(messages) if messages else int(mb * MESSAGES_PER_MB)))
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        default=DEFAULT_SIZES,
        help=f"MB or MB:MESSAGES, comma-separated ({DEFAULT_SIZES})",
    )
    parser.add_argument("--needle", default=NEEDLES[0], help="word searched for")
    parser.add_argument("--seed", type=int, default=20171025)
    parser.add_argument("--skip-body", action="store_true", help="skip the (slow) body search")
    parser.add_argument(
        "--big-message-mb",
        type=float,
        default=20,
        help="also measure an archive of one mail with an attachment this big (0: skip)",
    )
    parser.add_argument("--no-shared-corpus", action="store_true", help="generated messages only")
    # The measuring child's options.
    parser.add_argument("--measure", choices=("search", "pack"), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--query", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure:
        return child(args)
    rows = [measure_size(mb, messages, args) for mb, messages in parse_sizes(args.sizes)]
    print()
    print("\n".join(table(rows)))
    print()
    print("\n".join(growth_lines(rows)))
    if args.big_message_mb > 0:
        print(measure_big_message(args))
    rss = rows[0].measures["subject"].rss_before
    print(
        f"\nsearches stream their results away; pack = build_targz of every mail, its inputs "
        f"(members, index rows) made before the measurement; RSS after imports {rss / MB:.0f} MB; "
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
