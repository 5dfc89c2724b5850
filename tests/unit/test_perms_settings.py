"""Settings that would open too much: the output mode, the allowed file roots, the data root."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskd.settings import (
    DEFAULT_OUTPUT_MODE,
    Settings,
    SettingsError,
    folder_mode,
)

# --- TASKD_OUTPUT_MODE ----------------------------------------------------------------------


def test_the_output_mode_is_0640_by_default_and_its_folders_0750() -> None:
    s = Settings.from_env({})
    assert s.output_mode == DEFAULT_OUTPUT_MODE == 0o640
    assert s.output_folder_mode == 0o750


@pytest.mark.parametrize(
    ("raw", "mode", "folder"),
    [
        ("0640", 0o640, 0o750),
        ("640", 0o640, 0o750),
        ("0o640", 0o640, 0o750),
        ("0600", 0o600, 0o700),
        ("0644", 0o644, 0o755),
        ("0660", 0o660, 0o770),
        ("0664", 0o664, 0o775),
        ("0604", 0o604, 0o705),
    ],
)
def test_an_octal_output_mode_is_read(raw: str, mode: int, folder: int) -> None:
    s = Settings.from_env({"TASKD_OUTPUT_MODE": raw})
    assert (s.output_mode, s.output_folder_mode) == (mode, folder)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("rw-r-----", "is not an octal file mode; write e.g. 0640"),
        ("0648", "is not an octal file mode"),
        ("416", "TASKD_OUTPUT_MODE=0416 lets every user"),  # 0640 in decimal, read as octal
        ("0406", "write 0604 instead"),  # the fix offered passes every rule
        ("-640", "is not an octal file mode"),
        (" 0640", "is not an octal file mode"),
        ("6_40", "is not an octal file mode"),
        ("0x1a0", "is not an octal file mode"),
        ("4640", "bits outside 0777"),
        ("2750", "bits outside 0777"),
        ("1640", "bits outside 0777"),
        ("0666", "lets every user of the machine change the outputs; write 0664 instead"),
        ("0642", "write 0640 instead"),
        ("0440", "does not let taskd read and write what it writes; make the first digit 6"),
        ("0040", "make the first digit 6, e.g. 0640"),
    ],
)
def test_a_bad_output_mode_names_the_variable_and_the_fix(raw: str, says: str) -> None:
    with pytest.raises(SettingsError, match="TASKD_OUTPUT_MODE") as caught:
        Settings.from_env({"TASKD_OUTPUT_MODE": raw})
    assert says in str(caught.value)


def test_a_bad_output_mode_given_in_code_is_refused_too() -> None:
    for mode in (0o4640, 0o646, 0o440, -1):
        with pytest.raises(SettingsError, match="TASKD_OUTPUT_MODE"):
            Settings(output_mode=mode)


def _acceptable(mode: int) -> bool:
    return mode <= 0o777 and not mode & 0o002 and mode & 0o600 == 0o600


@given(st.integers(0, 0o7777), st.sampled_from(["{:o}", "{:03o}", "{:04o}", "0o{:o}"]))
def test_every_octal_spelling_is_read_or_refused_by_the_rules(mode: int, spelling: str) -> None:
    raw = spelling.format(mode)
    if _acceptable(mode):
        s = Settings.from_env({"TASKD_OUTPUT_MODE": raw})
        assert s.output_mode == mode
        assert s.output_folder_mode == folder_mode(mode)
    else:
        with pytest.raises(SettingsError, match=re.escape(f"TASKD_OUTPUT_MODE={mode:04o}")):
            Settings.from_env({"TASKD_OUTPUT_MODE": raw})


@given(st.integers(0, 0o777).filter(lambda mode: not _acceptable(mode)))
def test_the_fix_a_refusal_offers_is_itself_accepted(mode: int) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings(output_mode=mode)
    offered = re.findall(r"\b0[0-7]{3}\b", str(caught.value))[-1]
    assert Settings.from_env({"TASKD_OUTPUT_MODE": offered}).output_mode == int(offered, 8)


@given(st.text(max_size=8))
def test_any_text_is_an_acceptable_mode_or_a_settings_error(raw: str) -> None:
    try:
        s = Settings.from_env({"TASKD_OUTPUT_MODE": raw})
    except SettingsError as exc:
        assert "TASKD_OUTPUT_MODE" in str(exc)
        return
    assert _acceptable(s.output_mode)
    if raw:
        assert re.fullmatch(r"(0o?)?[0-7]{1,4}", raw)
        assert s.output_mode == int(raw.removeprefix("0o"), 8)


@given(st.integers(0, 0o777))
def test_a_folder_may_be_entered_by_whoever_may_read_its_files(mode: int) -> None:
    folder = folder_mode(mode)
    assert folder & mode == mode  # nothing taken away
    for read, enter in ((0o400, 0o100), (0o040, 0o010), (0o004, 0o001)):
        assert bool(folder & enter) == bool(mode & (read | enter))
    assert folder & 0o222 == mode & 0o222  # no write bit added


# --- TASKD_CONFIG_DIR -----------------------------------------------------------------------


def test_the_configuration_folder_is_etc_taskd_by_default() -> None:
    assert Settings.from_env({}).config_dir == Path("/etc/taskd")
    assert Settings.from_env({"TASKD_CONFIG_DIR": "/srv/conf"}).config_dir == Path("/srv/conf")


@pytest.mark.parametrize("raw", ["etc/taskd", "/", "//", "/etc/.."])
def test_a_configuration_folder_that_is_not_one_is_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match="TASKD_CONFIG_DIR=.*write e.g. /etc/taskd"):
        Settings.from_env({"TASKD_CONFIG_DIR": raw})


# --- TASKD_ALLOWED_FILE_ROOTS ---------------------------------------------------------------


def _env(data: Path, roots: str, **more: str) -> dict[str, str]:
    return {"TASKD_DATA_ROOT": str(data), "TASKD_ALLOWED_FILE_ROOTS": roots, **more}


@pytest.mark.parametrize("root", ["/", "//", "/tmp/..", "/./", "/srv/../"])
def test_the_whole_file_system_is_refused(root: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"TASKD_ALLOWED_FILE_ROOTS": f"/srv/shared:{root}"})
    text = str(caught.value)
    assert text.startswith(f"TASKD_ALLOWED_FILE_ROOTS: {str(Path(root))!r} is the whole file")
    assert "/etc/taskd" in text and "name the folders users may pack from" in text


def test_a_symlink_to_the_root_is_the_whole_file_system(tmp_path: Path) -> None:
    (tmp_path / "everything").symlink_to("/")
    with pytest.raises(SettingsError, match="'.*everything' is the whole file system"):
        Settings.from_env(_env(Path("/srv/data"), str(tmp_path / "everything")))


@pytest.mark.parametrize("root", ["tmp", "./files", "../x", "files/sub"])
def test_a_relative_root_is_refused(root: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"TASKD_ALLOWED_FILE_ROOTS": f"/srv/shared:{root}"})
    shown = str(Path(root))  # as pathlib spells it: './files' is 'files'
    assert str(caught.value).startswith(f"TASKD_ALLOWED_FILE_ROOTS: {shown!r} is a relative path")
    assert "write absolute folders separated by ':'" in str(caught.value)


def test_relative_and_whole_roots_are_refused_when_settings_are_made_in_code() -> None:
    for root in ("files", "/", "/tmp/.."):
        with pytest.raises(SettingsError, match="TASKD_ALLOWED_FILE_ROOTS"):
            Settings(allowed_file_roots=(Path("/srv"), Path(root)))


@pytest.mark.parametrize("relation", ["same", "above", "far above"])
def test_a_root_that_holds_the_data_root_is_refused(tmp_path: Path, relation: str) -> None:
    data = tmp_path / "srv" / "taskd" / "data"
    data.mkdir(parents=True)
    root = {"same": data, "above": data.parent, "far above": tmp_path}[relation]
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(_env(data, f"/srv/shared:{root}"))
    assert str(caught.value) == (
        f"TASKD_ALLOWED_FILE_ROOTS: {str(root)!r} holds the data root {data} (TASKD_DATA_ROOT), "
        "so a PACKMS could pack what only taskd may read; name folders outside it, "
        "e.g. /srv/shared"
    )


def test_the_default_root_is_not_refused_for_a_data_root_made_inside_it(tmp_path: Path) -> None:
    # Tests and trials make data roots under /tmp; PACKMS still packs nothing from them
    # (test_perms_packms.py). Chosen on purpose, the same root is refused.
    s = Settings.from_env({"TASKD_DATA_ROOT": str(tmp_path)})
    assert s.allowed_file_roots == (Path("/tmp"),)
    with pytest.raises(SettingsError, match="'/tmp' holds the data root"):
        s.check_file_roots()
    with pytest.raises(SettingsError, match="'/tmp' holds the data root"):
        Settings.from_env({"TASKD_DATA_ROOT": str(tmp_path), "TASKD_ALLOWED_FILE_ROOTS": "/tmp"})
    with pytest.raises(SettingsError, match="'/tmp' holds the data root"):
        Settings.from_env({"TASKD_DATA_ROOT": str(tmp_path)}, allowed_file_roots=(Path("/tmp"),))


def test_private_folders_name_what_only_taskd_reads(tmp_path: Path) -> None:
    s = Settings(data_root=tmp_path, mail_db=Path("/srv/mail"), config_dir=Path("/etc/x"))
    assert s.private_folders == (
        ("TASKD_DATA_ROOT", tmp_path),
        ("TASKD_MAIL_DB", Path("/srv/mail")),
        ("TASKD_CONFIG_DIR", Path("/etc/x")),
        ("TASKD_MAIL_INDEX", tmp_path / "work_space" / ".mail-index"),
    )
    assert len(s.with_(mail_index="off").private_folders) == 3


def test_roots_are_compared_after_resolving_symlinks_and_dots(tmp_path: Path) -> None:
    data = tmp_path / "real" / "data"
    data.mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    for root in (tmp_path / "alias", f"{tmp_path}/other/../real", f"{tmp_path}//real/"):
        with pytest.raises(SettingsError, match="holds the data root"):
            Settings.from_env(_env(data, str(root)))
    # And the other way round: the data root named through the link.
    with pytest.raises(SettingsError, match="holds the data root"):
        Settings.from_env(_env(tmp_path / "alias" / "data", str(tmp_path / "real")))


def test_a_root_inside_the_data_root_is_fine_outside_taskds_own_folders(tmp_path: Path) -> None:
    s = Settings.from_env(_env(tmp_path, f"{tmp_path / 'files'}:{tmp_path / 'shared' / 'x'}"))
    assert s.allowed_file_roots == (tmp_path / "files", tmp_path / "shared" / "x")
    beside = Settings.from_env(_env(tmp_path / "data", str(tmp_path / "data-files")))
    assert beside.allowed_file_roots == (tmp_path / "data-files",)


@pytest.mark.parametrize(
    ("inside", "what"),
    [
        ("task_queue", "the task queue"),
        ("task_queue/3", "the task queue"),
        ("download", "the downloads"),
        ("download/3", "the downloads"),
        ("retrieve", "the result sets"),
        ("work_space", "the work space"),
        ("mail_db", "the mail archive"),
        ("mail_db/yukoh", "the mail archive"),
        (".taskd", "taskd's own folder"),
        ("rejected", "the rejected originals"),
        ("redis", "the private Redis's files"),
    ],
)
def test_a_root_in_a_folder_taskd_keeps_is_refused(tmp_path: Path, inside: str, what: str) -> None:
    with pytest.raises(SettingsError, match=f"overlaps {what}") as caught:
        Settings.from_env(_env(tmp_path, str(tmp_path / inside)))
    assert "TASKD_ALLOWED_FILE_ROOTS" in str(caught.value)


def test_a_root_that_holds_a_mail_archive_outside_the_data_root_is_refused(
    tmp_path: Path,
) -> None:
    env = _env(tmp_path / "data", str(tmp_path / "archive"))
    env["TASKD_MAIL_DB"] = str(tmp_path / "archive" / "mail_db")
    with pytest.raises(SettingsError, match=r"overlaps the mail archive .* \(TASKD_MAIL_DB\)"):
        Settings.from_env(env)


@pytest.mark.parametrize("root", ["/etc", "/etc/taskd", "/etc/taskd/", "/etc/taskd/shared"])
def test_a_root_that_overlaps_the_configuration_is_refused(root: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"TASKD_ALLOWED_FILE_ROOTS": root})
    text = str(caught.value)
    shown = str(Path(root))
    assert text.startswith(f"TASKD_ALLOWED_FILE_ROOTS: {shown!r} overlaps the configuration")
    assert "/etc/taskd (TASKD_CONFIG_DIR)" in text


def test_the_configuration_folder_is_where_taskd_config_dir_says(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "taskd.env").write_text("TASKD_SMTP_URL=smtp://u:secret@mx\n")
    env = {"TASKD_CONFIG_DIR": str(conf), "TASKD_ALLOWED_FILE_ROOTS": str(tmp_path)}
    with pytest.raises(SettingsError, match="overlaps the configuration folder"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "TASKD_ALLOWED_FILE_ROOTS": "/etc"}).config_dir == conf


_NAMES = st.sampled_from(["a", "b", "data", "files", "..", ".", "", "link"])


@given(st.lists(_NAMES, max_size=5), st.lists(_NAMES, max_size=5))
def test_a_root_is_accepted_only_if_it_leaves_the_data_root_and_config_alone(
    root_parts: list[str], data_parts: list[str]
) -> None:
    """Generated roots and data roots, compared the way the kernel would walk them."""
    root = "/srv/" + "/".join(root_parts)
    data = "/srv/" + "/".join(data_parts)
    real_root = Path(os.path.realpath(root))
    real_data = Path(os.path.realpath(data))
    env = {"TASKD_DATA_ROOT": data, "TASKD_ALLOWED_FILE_ROOTS": root}
    private = [real_data / name for name in ("task_queue", "work_space", "download", "retrieve")]
    private += [real_data / n for n in ("mail_db", ".taskd", "rejected", "redis")]
    refused = (
        real_root == Path("/")
        or real_data.is_relative_to(real_root)
        or any(p.is_relative_to(real_root) or real_root.is_relative_to(p) for p in private)
    )
    if refused:
        with pytest.raises(SettingsError, match="TASKD_ALLOWED_FILE_ROOTS"):
            Settings.from_env(env)
    else:
        assert Settings.from_env(env).allowed_file_roots == (Path(root),)


# --- the data root must exist ---------------------------------------------------------------


def test_an_existing_data_root_is_required_and_found(tmp_path: Path) -> None:
    Settings(data_root=tmp_path).require_data_root()
    (tmp_path / "link").symlink_to(tmp_path)
    Settings(data_root=tmp_path / "link").require_data_root()


def test_a_missing_data_root_is_an_error_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "mozart" / "data"
    with pytest.raises(SettingsError) as caught:
        Settings(data_root=missing).require_data_root()
    assert str(caught.value) == (
        f"TASKD_DATA_ROOT={str(missing)!r} does not exist; create it (and task_queue/ in it) "
        "or point TASKD_DATA_ROOT at the data root"
    )
    assert not missing.exists() and not missing.parent.exists()


def test_a_data_root_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    with pytest.raises(SettingsError, match="TASKD_DATA_ROOT=.* is not a folder"):
        Settings(data_root=tmp_path / "data").require_data_root()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(SettingsError, match="does not exist"):
        Settings(data_root=tmp_path / "dangling").require_data_root()


def test_a_root_that_cannot_be_resolved_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """`/proc/1/cwd` for a user who may not read the link: an error naming it, not a trace."""

    def denied(path: object, **_: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os.path, "realpath", denied)
    with pytest.raises(SettingsError, match=r"'/proc/1/cwd' cannot be resolved \(Permission"):
        Settings.from_env({"TASKD_ALLOWED_FILE_ROOTS": "/proc/1/cwd"})
