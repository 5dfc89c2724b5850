"""The seeds' own RETRMS file, verbatim, and a PACKMS of its result, through the real system."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from taskcli.sample import write_sample
from tests.conftest import Drop
from tests.support.procs import REPO, BridgeProc

SEED_RETRMS = (REPO / "examples" / "0001.RETRMS").read_bytes()


@pytest.fixture(scope="module")
def archive(data_root: Path) -> Path:
    mail_db = data_root / "mail_db"
    write_sample(mail_db)
    return mail_db


def test_seed_retrms_verbatim_finds_packs_and_checks(
    bridge: BridgeProc, drop: Drop, archive: Path, tmp_path: Path
) -> None:
    assert b'"notify": ["yukoh@cellopoint.com","hank@cellopoint.com"],\n}' in SEED_RETRMS
    drop.write("0001.RETRMS", SEED_RETRMS)
    done = drop.wait_state("0001", {"SUCCESS", "FAILURE"}, timeout=60)
    assert done["state"] == "SUCCESS", done.get("error")
    rid = done["retrieve-id"]
    assert drop.find("0001") == drop.dir / f"0001-{rid}_100.RETRMS"
    assert list(done)[:6] == ["type", "description", "criterion", "pack", "notify", "task-id"]
    assert done["matched"] == 3
    result = json.loads((drop.data_root / "retrieve" / drop.user / f"{rid}.json").read_text())
    assert sorted(m["id"] for m in result["mails"]) == ["A11111", "A22222", "A33333"]
    assert any(m["subject"] == "haha 計劃進度" for m in result["mails"])
    output = Path(done["output"])
    assert output.parent == drop.data_root / "download" / drop.user
    assert output.name.startswith("搜尋任務A計劃") and output.name.endswith(".tar.gz")
    listing = subprocess.run(["tar", "tzf", str(output)], capture_output=True, check=True)
    names = listing.stdout.decode().split()
    assert "搜尋任務A計劃/mails/A22222.eml" in names and "搜尋任務A計劃/SHA256SUMS" in names
    subprocess.run(["tar", "xzf", str(output), "-C", str(tmp_path)], check=True)
    top = tmp_path / "搜尋任務A計劃"
    subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=top, check=True)
    original = next((archive / "yukoh" / "_ARCHIVE_" / "20171025").glob("A22222.eml"))
    assert (top / "mails" / "A22222.eml").read_bytes() == original.read_bytes()


def test_packms_of_a_result_set_with_files(
    bridge: BridgeProc, drop: Drop, archive: Path, tmp_path: Path
) -> None:
    drop.write("0001.RETRMS", SEED_RETRMS.replace(b'"pack": true', b'"pack": false'))
    searched = drop.wait_state("0001", "SUCCESS", timeout=60)
    assert "output" not in searched
    files = drop.data_root / "files"
    (files / "file1.doc").write_bytes(b"doc" * 1000)
    (files / "file2.pdf").write_bytes(b"%PDF-1.4 fake")
    packms = {
        "type": "PACKMS",
        "description": "搜尋任務A計劃",
        "retrieve-id": searched["retrieve-id"],
        "mails": ["A11111", "A33333"],
        "files": [str(files / "file1.doc"), str(files / "file2.pdf")],
        "notify": ["yukoh@cellopoint.com", "hank@cellopoint.com"],
    }
    drop.write("0002.PACKMS", json.dumps(packms, ensure_ascii=False, indent=4))
    done = drop.wait_state("0002", {"SUCCESS", "FAILURE"}, timeout=60)
    assert done["state"] == "SUCCESS", done.get("error")
    assert drop.find("0002") == drop.dir / "0002-100.PACKMS"
    assert "tmp-space" not in done
    with tarfile.open(done["output"]) as tar:
        names = sorted(tar.getnames())
    assert "搜尋任務A計劃/files/file1.doc" in names
    assert "搜尋任務A計劃/mails/A33333.eml" in names
    assert "搜尋任務A計劃/mails/A22222.eml" not in names
    subprocess.run(["tar", "xzf", done["output"], "-C", str(tmp_path)], check=True)
    subprocess.run(
        ["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=tmp_path / "搜尋任務A計劃", check=True
    )
    index = (tmp_path / "搜尋任務A計劃" / "index.csv").read_text(encoding="utf-8")
    assert index.splitlines()[0] == "id,date,from,to,subject,folder,day,size,sha256"
    assert "週報 haha" in index


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"retrieve-id": "NOPE123"}, "'NOPE123' is not a result set"),
        ({"files": ["/etc/passwd"]}, "outside the allowed folders"),
        ({"files": ["FILES" + "/.." * 12 + "/etc/passwd"]}, "outside the allowed folders"),
        ({"files": ["FILES/link-out"]}, "outside the allowed folders"),
        ({"files": ["relative.doc"]}, "not an absolute path"),
    ],
)
def test_hostile_packms_fails_clearly_and_writes_nothing(
    bridge: BridgeProc, drop: Drop, archive: Path, fields: dict[str, object], expected: str
) -> None:
    files = drop.data_root / "files"
    link = files / "link-out"
    if not link.is_symlink():
        link.symlink_to("/etc/hostname")
    fields = {
        k: ([str(v).replace("FILES", str(files)) for v in val] if isinstance(val, list) else val)
        for k, val in fields.items()
    }
    drop.write("h1.PACKMS", {"type": "PACKMS", "description": "../../x\u0000y", **fields})
    done = drop.wait_state("h1", {"FAILURE", "REJECTED", "SUCCESS"}, timeout=30)
    assert done["state"] in ("FAILURE", "REJECTED")
    assert expected in done["error"]
    assert not list((drop.data_root / "download").glob(f"{drop.user}/*.tar.gz"))


def test_result_sets_and_mail_ids_belong_to_their_user(
    bridge: BridgeProc, drop: Drop, archive: Path, data_root: Path
) -> None:
    other = Drop(data_root, drop.user + "x")
    other.write("0001.RETRMS", SEED_RETRMS.replace(b'"pack": true', b'"pack": false'))
    theirs = other.wait_state("0001", "SUCCESS", timeout=60)
    drop.write("p1.PACKMS", {"type": "PACKMS", "retrieve-id": theirs["retrieve-id"]})
    stolen = drop.wait_state("p1", "FAILURE", timeout=30)
    assert f"{theirs['retrieve-id']!r} is not a result set of user {drop.user}" in stolen["error"]
    drop.write(
        "p2.PACKMS",
        {"type": "PACKMS", "retrieve-id": "../" + theirs["retrieve-id"], "mails": ["../../x"]},
    )
    shaped = drop.wait_state("p2", "REJECTED", timeout=30)
    assert "retrieve-id" in shaped["error"] and "mails[0]" in shaped["error"]
    other.write(
        "0002.PACKMS",
        {"type": "PACKMS", "retrieve-id": theirs["retrieve-id"], "mails": ["A11111", "NOPE9"]},
    )
    unknown = other.wait_state("0002", "FAILURE", timeout=30)
    assert "'NOPE9' not in result set" in unknown["error"]
    assert not list((data_root / "download" / drop.user).glob("*.tar.gz"))
    assert not list((data_root / "download" / other.user).glob("*.tar.gz"))
