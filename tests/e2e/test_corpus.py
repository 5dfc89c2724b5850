"""Every real-world mail of ../shared/corpus found and packed byte for byte by the real system."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tasks.mailstore import FileMailStore
from tests.conftest import Drop
from tests.support.procs import BridgeProc
from tests.unit.test_mailstore_corpus import CORPUS, MBOX_MESSAGES, SINGLE_FILES, USER, _copy_corpus

pytestmark = pytest.mark.corpus


@pytest.fixture(scope="module")
def corpus_archive(data_root: Path) -> FileMailStore:
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is absent: the real-mail corpus tests need it")
    mail_db = data_root / "mail_db"
    if not (mail_db / USER).exists():
        _copy_corpus(mail_db)
    return FileMailStore(mail_db)


def test_retrms_with_an_empty_criterion_finds_and_packs_every_corpus_mail(
    bridge: BridgeProc, drop: Drop, corpus_archive: FileMailStore, tmp_path: Path
) -> None:
    task = {"type": "RETRMS", "description": "corpus", "criterion": {"user": USER}, "pack": True}
    drop.write("all.RETRMS", task)
    done = drop.wait_state("all", {"SUCCESS", "FAILURE"}, timeout=120)
    assert done["state"] == "SUCCESS", done.get("error")
    expected = SINGLE_FILES + sum(MBOX_MESSAGES.values())
    assert done["matched"] == expected
    result = json.loads(
        (drop.data_root / "retrieve" / drop.user / f"{done['retrieve-id']}.json").read_text()
    )
    ids = [m["id"] for m in result["mails"]]
    assert len(set(ids)) == expected == result["count"]
    subprocess.run(["tar", "xzf", done["output"], "-C", str(tmp_path)], check=True)
    top = tmp_path / "corpus"
    subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=top, check=True)
    for mail_id in ids:
        with corpus_archive.open(USER, mail_id) as original:
            assert (top / "mails" / f"{mail_id}.eml").read_bytes() == original.read(), mail_id
