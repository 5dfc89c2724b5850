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


def test_the_identity_is_made_once_and_names_the_path(tmp_path: Path) -> None:
    root = _root(tmp_path / "a")
    first = roots.root_id(root)
    assert first == roots.root_id(root)
    assert first.endswith(f"@{root}")


def test_a_copy_carries_the_file_but_is_another_root(tmp_path: Path) -> None:
    root = _root(tmp_path / "a")
    ident = roots.root_id(root)
    copy = tmp_path / "b"
    shutil.copytree(root, copy)
    assert roots.root_uuid(copy) == roots.root_uuid(root)
    assert roots.root_id(copy) != ident
    claim = roots.RootClaim(ident, str(root), "h").dump()
    assert roots.other_root(claim, roots.root_id(copy)) is not None
    assert roots.other_root(claim, ident) is None


def test_a_claim_of_the_older_form_is_still_this_root(tmp_path: Path) -> None:
    root = _root(tmp_path / "a")
    legacy = roots.RootClaim(roots.root_uuid(root), str(root), "h").dump()
    assert roots.other_root(legacy, roots.root_id(root)) is None
    assert roots.same_root(roots.root_uuid(root), roots.root_id(root))
    assert not roots.same_root(roots.root_uuid(root), f"{roots.root_uuid(root)}0@{root}")
    assert not roots.same_root("another", roots.root_id(root))


@given(st.one_of(st.integers(), st.lists(st.integers()), st.binary(max_size=64), st.text()))
def test_any_reply_is_read_without_raising(raw: object) -> None:
    claim = roots.RootClaim.parse(raw)
    assert claim is None or isinstance(claim.id, str)
    other = roots.other_root(raw, "x@/y")
    assert other is None or other.id != "x@/y"


def test_a_claim_of_another_root_is_named(tmp_path: Path) -> None:
    raw = json.dumps({"id": "other@/srv/b", "path": "/srv/b", "host": "h2"})
    other = roots.other_root(raw, roots.root_id(_root(tmp_path / "a")))
    assert other is not None and other.path == "/srv/b" and other.host == "h2"


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
