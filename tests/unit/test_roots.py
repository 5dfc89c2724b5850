"""The identity of a data root and how a claim in Redis is read (taskd/roots.py)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskd import roots
from taskd.settings import SettingsError


def _root(path: Path) -> Path:
    (path / ".taskd").mkdir(parents=True)
    return path


def test_the_identity_is_made_once(tmp_path: Path) -> None:
    root = _root(tmp_path / "a")
    first = roots.root_id(root)
    assert first == roots.root_id(root)
    assert (root / ".taskd" / "root-id").read_text().strip() == first


def test_a_copy_carries_the_file_but_is_another_root(tmp_path: Path) -> None:
    root = _root(tmp_path / "a")
    ident = roots.root_id(root)
    copy = tmp_path / "b"
    shutil.copytree(root, copy)
    assert roots.root_id(copy) == ident  # the same file...
    claim = roots.RootClaim(ident, roots.root_path(root), "h").dump()
    assert roots.other_root(claim, ident, roots.root_path(copy)) is not None  # ...elsewhere
    assert roots.other_root(claim, ident, roots.root_path(root)) is None


@pytest.mark.parametrize("named", ["{root}/", "{root}/.", "{root}//", "{root}/x/.."])
def test_one_root_named_in_other_ways_is_still_itself(tmp_path: Path, named: str) -> None:
    root = _root(tmp_path / "a")
    ident = roots.root_id(root)
    claim = roots.RootClaim(ident, named.format(root=root), "h").dump()  # an older version's
    assert roots.other_root(claim, ident, roots.root_path(Path(named.format(root=root)))) is None
    assert roots.other_root(claim, ident, roots.root_path(root)) is None


@given(st.one_of(st.integers(), st.lists(st.integers()), st.binary(max_size=64), st.text()))
def test_any_reply_is_read_without_raising(raw: object) -> None:
    claim = roots.RootClaim.parse(raw)
    assert claim is None or isinstance(claim.id, str)
    other = roots.other_root(raw, "x", "/y")
    assert other is None or other.id != "x" or other.path != "/y"


def test_a_claim_of_another_root_is_named(tmp_path: Path) -> None:
    root = _root(tmp_path / "a")
    raw = json.dumps({"id": "other", "path": "/srv/b", "host": "h2"})
    other = roots.other_root(raw, roots.root_id(root), roots.root_path(root))
    assert other is not None and other.path == "/srv/b" and other.host == "h2"
    text = str(roots.conflict("redis://:pw@h:6379/0", root, other))
    assert "identity other, of host h2" in text and "pw" not in text


def test_a_full_disk_when_the_identity_is_made_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    root = _root(tmp_path / "a")
    monkeypatch.setattr(roots.os, "link", no_space)
    with pytest.raises(SettingsError, match="cannot create .*root-id .No space left"):
        roots.root_id(root)
    assert list((root / ".taskd").iterdir()) == []  # nothing left aside


def test_an_unreadable_identity_says_what_to_do(tmp_path: Path) -> None:
    root = tmp_path / "a"
    root.mkdir()
    (root / ".taskd").write_text("a file where taskd's folder belongs")
    with pytest.raises(SettingsError, match="root-id.*remove it"):
        roots.root_id(root)
