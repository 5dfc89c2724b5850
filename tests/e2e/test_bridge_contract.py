"""The file contract through the real bridge, workers, Redis and inotify."""

from __future__ import annotations

import base64
import json
import os
import time

from tests.conftest import Drop
from tests.support.procs import BridgeProc, wait_until
from tests.support.writes import WriteLog


def test_progress_is_mirrored_within_a_second_and_at_most_once_a_second(
    bridge: BridgeProc, drop: Drop
) -> None:
    with WriteLog(drop.dir) as log:
        drop.write("0002.SLOW", {"type": "SLOW", "steps": 40, "step-seconds": 0.1})
        drop.wait_state("0002", "PROGRESS", timeout=10)
        seen = wait_until(lambda: 20 <= drop.fields("0002").get("progress", 0) < 100, 5)
        assert seen
        done = drop.wait_state("0002", "SUCCESS", timeout=30)
        wait_until(lambda: any("_100." in n for _, n in log.of("0002")), 5)
        writes = log.of("0002")
    assert done["progress"] == 100
    times = [t for t, _ in writes]
    # QUEUED, some progress, SUCCESS; a 4 s run with progress every 0.1 s is written about
    # once a second, never twice within one (the terminal write may come at once).
    assert 4 <= len(writes) <= 9, writes
    running = times[:-1]
    gaps = [b - a for a, b in zip(running, running[1:], strict=False)]
    assert min(gaps) >= 0.9, gaps
    assert max(gaps) <= 2.1, gaps


def test_terminal_state_is_written_at_once(bridge: BridgeProc, drop: Drop) -> None:
    drop.write("0003.SLOW", {"type": "SLOW", "steps": 12, "step-seconds": 0.1})
    done = drop.wait_state("0003", {"SUCCESS", "FAILURE"}, timeout=30, interval=0.01)
    seen_at = time.time()
    ends = [line for line in drop.runs() if line.startswith(f"{done['job-id']} 0003 end ")]
    assert len(ends) == 1 and done["state"] == "SUCCESS"
    ended_at = float(ends[0].split()[-1])
    # within one mirror tick of the job's end, not held back by the once-a-second limit
    assert seen_at - ended_at < 1.5, seen_at - ended_at


def test_a_file_written_in_chunks_is_not_taken_early(bridge: BridgeProc, drop: Drop) -> None:
    content = json.dumps(
        {"type": "SLOW", "steps": 1, "label": "x" * 200, "step-seconds": 0.01}
    ).encode()
    size = -(-len(content) // 5)
    chunks = [content[i : i + size] for i in range(0, len(content), size)]
    path = drop.dir / "0004.SLOW"
    with open(path, "wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
            handle.flush()
            time.sleep(0.45)  # the UI writing slowly: this is the input, not a wait for a result
            if handle.tell() < len(content):
                assert path.read_bytes() == content[: handle.tell()], "touched while written"
    done = drop.wait_state("0004", "SUCCESS", timeout=20)
    assert done["label"] == "x" * 200


def test_chunks_appended_with_close_in_between_are_not_taken_early(
    bridge: BridgeProc, drop: Drop
) -> None:
    content = b'{"type": "SLOW", "steps": 1, "step-seconds": 0.01, "label": "chunked",}'
    size = -(-len(content) // 5)
    path = drop.dir / "0005.SLOW"
    for i in range(0, len(content), size):
        with open(path, "ab") as handle:
            handle.write(content[i : i + size])
        time.sleep(0.4)  # the UI's pace, the input of this test
        if i + size < len(content):
            assert path.exists() and path.read_bytes() == content[: i + size]
    done = drop.wait_state("0005", "SUCCESS", timeout=20)
    assert done["label"] == "chunked"


def test_bad_files_are_rejected_with_an_error_and_their_content_kept(
    bridge: BridgeProc, drop: Drop
) -> None:
    drop.write("b1.SLOW", {"type": "SLOW", "steps": "many"})
    drop.write("b2.NOPE", {"type": "NOPE"})
    drop.write("b3.SLOW", b"\xff\xfe not utf-8 {")
    drop.write("b4.SLOW", {"type": "RETRMS"})
    drop.write("good.SLOW", {"type": "SLOW", "steps": 1, "step-seconds": 0.01})
    b1 = drop.wait_state("b1", "REJECTED", timeout=10)
    assert "steps" in b1["error"] and b1["steps"] == "many"
    # content first, then the name: the rename follows the rewrite within a moment
    wait_until(lambda: (drop.dir / "b1-ERR.SLOW").exists(), 5, what="b1-ERR.SLOW")
    b2 = drop.wait_state("b2", "REJECTED", timeout=10)
    assert "NOPE" in b2["error"] and "SLOW" in b2["error"]
    b4 = drop.wait_state("b4", "REJECTED", timeout=10)
    assert "type" in b4["error"] and ".SLOW" in b4["error"]
    # the good file is not held up by the bad ones
    drop.wait_state("good", "SUCCESS", timeout=15)


def test_unparseable_file_is_rejected_after_reject_after_keeping_its_bytes(
    bridge: BridgeProc, drop: Drop
) -> None:
    raw = b"\xff\xfe not utf-8 {"
    drop.write("b5.SLOW", raw)
    rejected = drop.wait_state("b5", "REJECTED", timeout=20)
    assert base64.b64decode(rejected["original-base64"]) == raw
    assert "UTF-8" in rejected["error"]


def test_non_task_files_are_left_alone(bridge: BridgeProc, drop: Drop) -> None:
    others = {
        "0001.notify.eml": b"Subject: hi\n\nbody",
        ".hidden.SLOW": b'{"type": "SLOW"}',
        "draft.SLOW~": b'{"type": "SLOW"}',
        "#x.SLOW#": b'{"type": "SLOW"}',
        "notes.txt": b"plain",
    }
    for name, data in others.items():
        (drop.dir / name).write_bytes(data)
    os.mkfifo(drop.dir / "pipe.SLOW")
    (drop.dir / "sub.SLOW").mkdir()
    (drop.dir / "link.SLOW").symlink_to(drop.dir / "notes.txt")
    drop.write("marker.SLOW", {"type": "SLOW", "steps": 0})
    drop.wait_state("marker", "SUCCESS", timeout=15)
    for name, data in others.items():
        assert (drop.dir / name).read_bytes() == data
    assert (drop.dir / "pipe.SLOW").exists() and (drop.dir / "sub.SLOW").is_dir()
    assert (drop.dir / "link.SLOW").is_symlink()


def test_a_failing_task_ends_failure_with_its_message_and_an_err_name(
    bridge: BridgeProc, drop: Drop
) -> None:
    message = "criterion.file[0]: 2017 is not a day; write YYYYMMDD like 20171025"
    drop.write("f1.SLOW", {"type": "SLOW", "steps": 2, "step-seconds": 0.05, "fail": message})
    failed = drop.wait_state("f1", "FAILURE", timeout=20)
    assert failed["error"] == message
    assert drop.find("f1") == drop.dir / f"f1-{failed['ticket']}_ERR.SLOW"
    assert failed["finished-at"].endswith("Z") and "Traceback" not in json.dumps(failed)
    assert not (drop.data_root / "work_space" / drop.user / "f1" / failed["job-id"]).exists()
