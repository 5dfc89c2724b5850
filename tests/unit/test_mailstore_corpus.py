"""The reference store over ~485 real mails in many charsets and states of repair.

The corpus (../shared/corpus, see its README) is copied into an archive laid out as the store
expects: each single-message file as `<name>.eml` in a day folder of its own source folder, the
four mbox files as `.mbox` day files (one of them on a day that also has `.eml` files).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest

from tasks.mailstore import Criterion, FileMailStore, MailSummary, search
from tasks.mailstore.message import StoredMessage

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
NOT_MAIL = frozenset({"SOURCE.txt", "LICENSE", "NOTICE", "README.md"})
USER = "corpus"
SINGLE_FILES = 446
MBOX_MESSAGES = {
    "content-length.mbox.txt": 29,
    "issue1189.mbox.txt": 4,
    "simple.mbox.txt": 3,
    "unmunged.mbox.txt": 2,
}
BOM = b"\xef\xbb\xbf"

pytestmark = pytest.mark.corpus


@dataclass
class Archive:
    store: FileMailStore
    sources: dict[Path, Path]
    """Archive file -> corpus file it is a copy of."""
    messages: list[StoredMessage]

    def by_source(self, relative: str) -> StoredMessage:
        source = CORPUS / relative
        (found,) = [m for m in self.messages if self.sources[m.path] == source]
        return found


def _day(number: int) -> str:
    return (date(2000, 1, 1) + timedelta(days=number)).strftime("%Y%m%d")


def _copy_corpus(root: Path) -> dict[Path, Path]:
    files = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name not in NOT_MAIL)
    folders = sorted({p.parent for p in files})
    sources = {}
    for source in files:
        folder = source.relative_to(CORPUS).parts[0]
        if source.name in MBOX_MESSAGES:
            # content-length shares its day with the mimekit/messages .eml files
            number = folders.index(CORPUS / "mimekit/messages")
            days = [_day(number), "20200102", "20200103", "20200104"]
            day = days[sorted(MBOX_MESSAGES).index(source.name)]
            target = root / USER / folder / f"{day}.mbox"
        else:
            target = (
                root / USER / folder / _day(folders.index(source.parent)) / f"{source.name}.eml"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        sources[target] = source
    return sources


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is absent: the real-mail corpus tests need it")
    root = tmp_path_factory.mktemp("archive")
    sources = _copy_corpus(root)
    store = FileMailStore(root)
    messages = [m for p in store.partitions() for m in store.messages(p)]
    return Archive(store, sources, messages)


def _mbox_slices(data: bytes) -> dict[int, bytes]:
    """Independently of the splitter: where this corpus's mbox messages start, and their bytes."""
    starts = [len(BOM)] if data.startswith(BOM + b"From ") else []
    offset = 0
    for line in data.splitlines(keepends=True):
        if line.startswith(b"From ") and not line.startswith(b"From Russia"):
            starts.append(offset)
        offset += len(line)
    ends = [*starts[1:], len(data)]
    return {start: data[start:end] for start, end in zip(starts, ends, strict=True)}


def test_every_message_is_listed_once(archive: Archive) -> None:
    singles = [m for m in archive.messages if m.offset is None]
    assert len(singles) == SINGLE_FILES
    per_mbox: dict[str, int] = {}
    for message in archive.messages:
        if message.offset is not None:
            name = archive.sources[message.path].name
            per_mbox[name] = per_mbox.get(name, 0) + 1
    assert per_mbox == MBOX_MESSAGES
    ids = [m.summary.id for m in archive.messages]
    assert len(ids) == SINGLE_FILES + sum(MBOX_MESSAGES.values())
    assert len(set(ids)) == len(ids)


def test_every_message_reads_back_byte_for_byte(archive: Archive) -> None:
    slices = {
        target: _mbox_slices(source.read_bytes())
        for target, source in archive.sources.items()
        if source.name in MBOX_MESSAGES
    }
    for message in archive.messages:
        with archive.store.open(USER, message.summary.id) as stream:
            stored = stream.read()
        if message.offset is None:
            assert stored == archive.sources[message.path].read_bytes(), message.path
        else:
            assert stored == slices[message.path][message.offset], message.summary.id
        assert len(stored) == message.raw_size == message.summary.size
    listed = {(m.path, m.offset) for m in archive.messages if m.offset is not None}
    assert listed == {(path, start) for path, starts in slices.items() for start in starts}


def test_empty_criterion_finds_everything(archive: Archive) -> None:
    progress: list[tuple[int, int]] = []
    found = list(search(archive.store, Criterion.from_json({}), lambda *p: progress.append(p)))
    assert [s.id for s in found] == [m.summary.id for m in archive.messages]
    total = sum(p.size for p in archive.store.partitions())
    assert progress[-1] == (total, total)


def test_nothing_raises_and_everything_is_json(archive: Archive) -> None:
    for message in archive.messages:
        summary = message.summary
        json.dumps(summary.to_json(), ensure_ascii=False).encode("utf-8")
        assert isinstance(message.body_text().encode("utf-8"), bytes)
        assert isinstance(message.has_attachment(), bool)
        assert archive.store.summary(USER, summary.id) == summary


def test_text_searches_over_the_corpus(archive: Archive) -> None:
    def ids(**criterion: object) -> set[str]:
        query = Criterion.from_json(criterion)
        return {s.id for s in search(archive.store, query, lambda done, total: None)}

    def id_of(relative: str) -> str:
        return archive.by_source(relative).summary.id

    assert id_of("spamassassin/spam/utf16.eml") in ids(body="Dear potencial partner")
    assert id_of("mikel-mail/multi_charset/japanese_iso_2022.eml") in ids(body="すみません")
    assert id_of("mailcore2/summary/input/5230-thai-chinese.eml") in ids(body="เป็นคนไม่ค่อยพูด")
    assert ids(subject="台湾鑫龙商贸") == {id_of("spamassassin/nice/cjk/gb2312.1")}
    assert id_of("spamassassin/nice/cjk/gb2312.1") in ids(body="送货上门")


# Expected text written by hand from the raw bytes of each message.
SUBJECTS = {
    "spamassassin/nice/cjk/big5-base64.1": (
        "[SLAT-talk] 鉅靡6月17日新片又到.如有重複寄發.敬請原諒!．．．．．．"
        "鉅靡6月17日新片又到.如有重複寄發.敬請原諒!．．．"
    ),
    "spamassassin/nice/cjk/gb2312.1": (
        "全新原装进口，送货上门，货到付款－台湾鑫龙商贸集团公司向您拜年!"
    ),
    "spamassassin/spam/utf16.eml": "Design and manufacturing",
    "mailcore2/summary/input/1798-korean.eml": (
        "[주말특가] 일본정품 후끈후끈 핫팩, 손난로 주말특가!"
    ),
    "mailcore2/summary/input/1640-no-charset.eml": "[멜론] 이용약관 및 서비스 상품약관 변경 안내",
    "mailcore2/summary/input/1021-chinese.eml": "哈哈",
    "mailcore2/summary/input/5230-thai-chinese.eml": "เหตุทำให้สมองเสื่อมไว",
    "mailcore2/summary/input/2765-korean.eml": "errorlog 정리",
    "mailcore2/summary/input/4850-russian.eml": "Рассылка: Уведомление участникам тендеров",
    "mailcore2/summary/input/989-encoding-8.eml": "Видеообзоры интересных девайсов только для вас!",
    "mailcore2/summary/input/2195-greek.eml": "Έκδοση μηνιαίου λογαριασμού 15/02/2011",
    "mailcore2/summary/input/4925-japanese.eml": "ＥＴＣマイレージからのお知らせ",
    "mailcore2/summary/input/6094-japanese-1.eml": "Re: 緊急ミーティング",
    "mikel-mail/multi_charset/japanese_iso_2022.eml": "まみむめも",
    "mikel-mail/error_emails/bad_encoded_subject.eml": "TEST",
    "mikel-mail/error_emails/invalid_subject_characters.eml": (
        "Formação FrenetikPolis: Mega Campanha Final Verão | Cursos de Setembro"
    ),
    "mikel-mail/error_emails/content_transfer_encoding_empty.eml": (
        "4d8119\u3000(大補泡麵專賣) 大家說英語 每日聽MP3 (2004年6月份) "
        "繁體中文光碟版 (英語教學)\u30008afb90"
    ),
    "mikel-mail/plain_emails/raw_email_with_partially_quoted_subject.eml": (
        'Re: Test: "漢字" mid "漢字" tail'
    ),
    "mikel-mail/attachment_emails/attachment_pdf_lf.eml": (
        "Another PDF with \U0001f389 Unicode chars in it \U0001f37f"
    ),
    # ISO-8859-8 is stored in visual order; the store gives reading order.
    "mailcore2/parser/input/mbox/jwz/3": "test of עברית in mail headers",
}


@pytest.mark.parametrize(("relative", "subject"), sorted(SUBJECTS.items()))
def test_subjects_decode_to_the_right_text(archive: Archive, relative: str, subject: str) -> None:
    assert archive.by_source(relative).summary.subject == subject


ADDRESSES = {
    "spamassassin/nice/cjk/gb2312.1": (
        "台湾鑫龙商贸集团公司 <1234@e34.com>",
        "NEW02-11-19 <1234@e34.com>",
    ),
    "mailcore2/summary/input/1021-chinese.eml": (
        "向左 <wujyou@qq.com>",
        "189佑 <wujingyou@189.cn>",
    ),
    "mailcore2/summary/input/2765-korean.eml": ("이성수 ss.lee@gph.me", "'개발팀' dev@gph.me"),
    "mikel-mail/multi_charset/japanese_iso_2022.eml": (
        "Mikel Lindsaar <raasdnil@gmail.com>",
        "みける <raasdnil@gmail.com>",
    ),
    "spamassassin/nice/unicode1": (
        "Marilù Gioffré ♥ <Marilù.Gioffré@esempio-università.it>",
        "Dörte Å. Sörensen, Jr. <Dörte@Sörensen.example.com>, θσερ@εχαμπλε.ψομ",
    ),
}


@pytest.mark.parametrize(("relative", "addresses"), sorted(ADDRESSES.items()))
def test_addresses_decode_to_the_right_text(
    archive: Archive, relative: str, addresses: tuple[str, str]
) -> None:
    summary = archive.by_source(relative).summary
    assert (summary.from_, summary.to) == addresses


def test_dates(archive: Archive) -> None:
    def summary(relative: str) -> MailSummary:
        return archive.by_source(relative).summary

    # two Date headers: the first one counts
    assert summary("spamassassin/nice/cjk/big5-base64.1").date == "2001-06-18T17:16:04Z"
    assert summary("mailcore2/summary/input/2765-korean.eml").date == ""
    assert summary("mikel-mail/error_emails/bad_encoded_subject.eml").date == ""


def test_files_that_are_not_messages(archive: Archive) -> None:
    null = archive.by_source("spamassassin/spam/bsmtpnull").summary
    assert (null.size, null.subject, null.from_, null.date) == (1, "", "", "")
    with archive.store.open(USER, null.id) as stream:
        assert stream.read() == b"\n"
    transcript = archive.by_source("spamassassin/spam/bsmtp").summary
    assert transcript.subject == "foo"


@pytest.mark.timeout(30)  # a quadratic decoder would take minutes: fail, do not hang
def test_huge_to_header_decodes_quickly(archive: Archive) -> None:
    message = archive.by_source("mimekit/messages/stack-overflow.txt")
    fresh = archive.store.summary(USER, message.summary.id)
    assert fresh.to.startswith("test <test@test.com>, date>2017-08-20T10:08:28.617</prdate>")
    assert fresh.to.count("</pr") == 2710


CACHE_QUERIES = [
    {},
    {"subject": "re"},
    {"subject": "哈哈"},
    {"subject": "Рассылка"},
    {"from": "example"},
    {"to": "@"},
    {"subject": "e", "from": "a"},
    {"has-attachment": True},
    {"since": "2005-01-01"},
]


def test_the_header_cache_answers_as_reading_the_mails_does(
    archive: Archive, tmp_path: Path
) -> None:
    # Every entry of real mail (odd charsets, lone surrogates from undecodable bytes, folded
    # and huge headers) goes through a cache section and back: filled by a first search, read
    # by a second, the summaries are those of a store without a cache, field for field.
    def results(store: FileMailStore, query: dict[str, object]) -> list[dict[str, object]]:
        found = search(store, Criterion.from_json(query), lambda done, total: None, USER)
        return [{**s.to_json(), "labels": s.labels, "message_id": s.message_id} for s in found]

    index = tmp_path / "index"
    for query in CACHE_QUERIES:
        expected = results(FileMailStore(archive.store.root), query)
        assert expected, f"{query} finds nothing to compare"
        assert results(FileMailStore(archive.store.root, index), query) == expected, query
        assert results(FileMailStore(archive.store.root, index), query) == expected, query
    assert any(index.rglob("*.idx"))
