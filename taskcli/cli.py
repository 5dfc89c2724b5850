"""The `taskd` command: the bridge, workers, Flower, and the ops verbs.

`main(argv)` returns an exit code, so tests call it directly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import files, logs

if TYPE_CHECKING:
    from taskd.settings import Settings

EXIT_OK = 0
EXIT_BAD = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="data root (TASKD_DATA_ROOT)")
    parser.add_argument("--redis-url", help="broker and backend URL (TASKD_REDIS_URL)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskd", description="File-driven tasks for the mail archive, run by Celery."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {
        "bridge": "run the bridge in the foreground",
        "worker": "a Celery worker on the queues retrieve, pack, notify (or -Q)",
        "flower": "Flower against the same broker",
        "check": "validate task files as the bridge would; exit 1 if any is bad",
        "submit": "write a task file into the queue atomically, as the UI would, once it passes "
        "taskd check; the task-id and type come from the file's name",
        "show": "a task's file state and its Celery state",
        "status": "counts by state (today, total), queues, live workers, running tasks",
        "up": "bridge, workers and Flower on one machine (a private Redis if none answers)",
        "retry": "run FAILURE tasks again, same task-id, new job id",
        "schedules": "each schedule in <data-root>/schedules/, its next runs and its last",
        "cap": "list or set how many jobs of a type run at once, without restarting anything",
    }
    parsers = {}
    for name, help_text in commands.items():
        parsers[name] = sub.add_parser(name, help=help_text, description=help_text)
        _common(parsers[name])
    for name in ("worker", "flower"):
        parsers[name].add_argument("extra", nargs=argparse.REMAINDER, help="passed on to Celery")
    parsers["check"].add_argument("files", nargs="+", type=Path)
    parsers["retry"].add_argument("files", nargs="+", type=Path)
    parsers["submit"].add_argument("user_id")
    parsers["submit"].add_argument(
        "file", type=Path, help="named <task-id>.<TYPE>: the task-id and type come from the name"
    )
    parsers["submit"].add_argument(
        "--wait",
        action="store_true",
        help="wait until the task ends and print its file; exit 0 on SUCCESS, 1 on FAILURE, "
        "REJECTED or a cancel (file deleted), 2 when --timeout passes first",
    )
    parsers["submit"].add_argument(
        "--timeout", type=float, metavar="S", help="with --wait: give up after S seconds"
    )
    parsers["submit"].add_argument(
        "--no-check",
        action="store_true",
        help="hand the file in even if it is bad (taskd check's verdict), for the bridge to reject",
    )
    parsers["show"].add_argument("target", help="a task file or a job id")
    parsers["status"].add_argument("--json", action="store_true", help="one JSON object")
    parsers["status"].add_argument(
        "--watch", action="store_true", help="again every --interval seconds, until Ctrl-C"
    )
    parsers["status"].add_argument(
        "--interval", type=float, default=2.0, help="seconds between --watch updates"
    )
    parsers["status"].add_argument(
        "--user", metavar="USER-ID", help="count this user's tasks only (queues stay global)"
    )
    parsers["cap"].add_argument("type", nargs="?", help="a task type, like PACKMS")
    parsers["cap"].add_argument(
        "value", nargs="?", help="jobs running at once (0 holds them all), or none for no cap"
    )
    parsers["cap"].add_argument(
        "--default", action="store_true", help="drop what ops set: the schema's cap holds again"
    )
    parsers["up"].add_argument("--workers", type=int, default=1, help="worker processes")
    parsers["up"].add_argument(
        "--flower-port",
        type=int,
        default=5555,
        help="Flower's port on 127.0.0.1, behind a login (0: none)",
    )
    parsers["up"].add_argument(
        "--sample", action="store_true", help="create a sample mail archive if there is none"
    )
    return parser


def _settings(args: argparse.Namespace) -> Any:
    from taskd.settings import Settings

    return Settings.from_env(
        data_root=Path(args.data_root) if args.data_root else None, redis_url=args.redis_url
    )


def _export(settings: Any) -> None:
    """Child processes (Celery, Flower) read the same settings from the environment."""
    os.environ["TASKD_DATA_ROOT"] = str(settings.data_root)
    os.environ["TASKD_REDIS_URL"] = settings.redis_url


def cmd_bridge(args: argparse.Namespace) -> int:
    import logging

    from bridge import web
    from bridge.daemon import Bridge
    from bridge.leader import Leadership
    from bridge.web.door import open_door
    from taskd import redisconn
    from taskd.celeryconf import CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S, publishing_app
    from taskd.tasktypes import load_types

    settings = _settings(args)
    logs.setup(settings.log_format)
    settings.require_data_root()  # a typo or an unmounted share is said, not created empty
    client = redisconn.client(settings, SOCKET_TIMEOUT_S, CONNECT_TIMEOUT_S)
    stop = threading.Event()

    def stopping(signum: int, _frame: object) -> None:
        if not stop.is_set():  # said once, whichever signal comes first
            logging.getLogger("bridge").warning(
                "%s received: stopping", signal.Signals(signum).name
            )
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stopping)
    if settings.spares:
        files.keep_spares()
    bridge = Bridge(settings, load_types(settings.type_dirs), publishing_app(settings), client)
    leader = Leadership(client, settings.data_root, settings.redis_url, bridge.metrics)
    # Served while standing by too: /healthz answers 503 and says why this bridge waits.
    door = open_door(settings, bridge.core.types)  # open while standing by too: it only writes
    if door is not None and settings.serve_port is None:
        logging.getLogger("bridge").warning(
            "TASKD_HTTP_TOKEN is set but TASKD_HTTP_PORT is not: the task door stays closed"
        )
    server = web.serve(settings.http_host, settings.serve_port, bridge.metrics, door)
    try:
        # A second bridge on the same data root stands by until the active one is gone.
        if not leader.acquire(stop):
            return EXIT_OK
        leader.keep(stop)
        try:
            bridge.run(stop, server)
        finally:
            leader.release()
    finally:
        if server is not None:
            server.stop()
    return EXIT_LOCKED if leader.lost.is_set() else EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from taskcli.up import worker_queues

    settings = _settings(args)
    _export(settings)
    extra = list(args.extra)
    queues = worker_queues(settings)
    if not any(a in ("-Q", "--queues") or a.startswith(("--queues=", "-Q")) for a in extra):
        extra += ["-Q", queues]
    _preface(
        extra,
        f"taskd worker: a Celery worker for taskd (celery -A tasks worker). Options of taskd's "
        f"own: {OWN_HELP}. Without -Q it serves every task type's queue ({queues}). Celery's "
        "own options follow; write them after `taskd worker`.",
    )
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker", *extra]
    os.execv(sys.executable, argv)
    return EXIT_OK  # pragma: no cover - execv does not return


def cmd_flower(args: argparse.Namespace) -> int:
    from taskcli.up import flower_options

    _export(_settings(args))
    # Loopback unless told otherwise; the password belongs in FLOWER_BASIC_AUTH, not argv.
    extra = flower_options(list(args.extra), os.environ)
    _preface(
        extra,
        f"taskd flower: Flower on taskd's Redis (celery -A tasks flower). Options of taskd's own: "
        f"{OWN_HELP}. It listens on 127.0.0.1 unless --address says otherwise; its login comes "
        "from FLOWER_BASIC_AUTH. Flower's own options follow.",
    )
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "flower", *extra]
    os.execv(sys.executable, argv)
    return EXIT_OK  # pragma: no cover


OWN_HELP = "--data-root (TASKD_DATA_ROOT) and --redis-url (TASKD_REDIS_URL)"


def _preface(extra: list[str], text: str) -> None:
    """Before Celery's or Flower's own help: what taskd adds to it."""
    if "--help" in extra or "-h" in extra:
        print(textwrap.fill(text, 79) + "\n", flush=True)


def cmd_check(args: argparse.Namespace) -> int:
    from bridge import contract

    settings = _settings(args)
    bad = 0
    for path in args.files:
        name = contract.parse_name(("check", path.name))
        problem = (
            "not a task file name (<task-id>.<TYPE>, TYPE upper case)"
            if name is None
            else _problem_of(settings, path, name)
        )
        print(f"{path}: {problem or 'ok'}")
        bad += problem is not None
    return EXIT_BAD if bad else EXIT_OK


def _problem_of(settings: Settings, path: Path, name: Any) -> str | None:
    """What the bridge would say is wrong with the file at `path`, or None if it is good."""
    from bridge import files
    from bridge.judge import judge, too_large
    from taskd.formats import checker
    from taskd.tasktypes import load_types

    try:
        raw = files.read_regular(path, settings.max_task_bytes)
    except files.TooLarge as exc:
        return too_large(exc.size, exc.limit)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    verdict = judge(raw, name, load_types(settings.type_dirs), checker(settings.mail_db_path))
    return None if verdict.ok else str(verdict.error)


def cmd_retry(args: argparse.Namespace) -> int:
    from taskcli.retry import RetryError, retry_file
    from taskd.tasktypes import load_types

    settings = _settings(args)
    types = load_types(settings.type_dirs)
    bad = 0
    for path in args.files:
        try:
            target, restored = retry_file(path, types, settings.task_queue)
        except RetryError as exc:
            print(f"{path}: {exc}")
            bad += 1
            continue
        if restored:
            print(
                f"{path}: its job had finished (Redis was away when it ended); restored as "
                f"{target.name}, not run again"
            )
        else:
            print(f"{path}: queued again as {target.name}")
    return EXIT_BAD if bad else EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    from bridge import contract

    settings = _settings(args)
    settings.require_data_root()  # a typo is said, not created as an unwatched folder
    if not contract.USER_RE.fullmatch(args.user_id):
        print(f"user-id {args.user_id!r} must be [A-Za-z0-9_]+", file=sys.stderr)
        return EXIT_USAGE
    name = contract.parse_name((args.user_id, args.file.name))
    if name is None:
        print(f"{args.file.name}: name it <task-id>.<TYPE>, TYPE upper case", file=sys.stderr)
        return EXIT_USAGE
    if not settings.task_queue.is_dir():  # an unmounted share's empty mount point, say
        print(
            f"{settings.task_queue} does not exist: is the data root mounted? "
            "(taskd never creates it here)",
            file=sys.stderr,
        )
        return EXIT_BAD
    if not args.no_check:
        problem = _problem_of(
            settings, args.file, contract.parse_name((args.user_id, args.file.name))
        )
        if problem is not None:
            print(
                f"{args.file}: {problem}\nnot submitted (--no-check hands it in all the same, "
                "for the bridge to reject with this error in the file)",
                file=sys.stderr,
            )
            return EXIT_BAD
    target_dir = settings.task_queue / args.user_id
    target_dir.mkdir(exist_ok=True)
    target = target_dir / args.file.name
    holder = _holder_of(target)
    if holder is not None:
        print(
            f"task-id in use by {holder}; use another task-id (the file's name gives it: "
            f"rename {args.file.name})",
            file=sys.stderr,
        )
        return EXIT_BAD
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"{args.file}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD
    try:
        _write_in(data, target)
    except FileExistsError:
        print(f"{target} exists already", file=sys.stderr)
        return EXIT_BAD
    print(target)
    if not args.wait:
        return EXIT_OK
    return _wait_for(settings, target, args.timeout)


def _wait_for(settings: Settings, target: Path, timeout: float | None) -> int:
    """`submit --wait`: the task's file once it ended (stdout), or why waiting stopped."""
    from bridge import contract, waiting

    task_id, task_type = target.name.rsplit(".", 1)
    try:
        outcome = waiting.wait(
            settings.task_queue,
            target.parent.name,
            task_id,
            task_type,
            settings.max_task_bytes * 8,
            timeout,
        )
    except KeyboardInterrupt:
        print("stopped waiting; the task goes on", file=sys.stderr)
        return waiting.TIMED_OUT
    if outcome.task is not None and outcome.code != waiting.TIMED_OUT:
        path = target.parent / outcome.task.name
        sys.stdout.write(contract.dump(outcome.task.fields).decode("utf-8"))
        print(f"{path}: {outcome.why}", file=sys.stderr)
    else:
        print(f"{target}: {outcome.why}", file=sys.stderr)
    return outcome.code


def cmd_cap(args: argparse.Namespace) -> int:
    """List each type's cap, or set one type's: the active bridge applies it at its next tick."""
    from taskd import caps
    from taskd.tasktypes import load_types

    settings = _settings(args)
    settings.require_data_root()
    types = load_types(settings.all_type_dirs)
    try:
        overrides = _caps_to_change(settings.data_root, args.type is not None)
        if args.type is not None:
            if args.type not in types:
                print(
                    f"taskd cap: no task type {args.type!r}; known: {', '.join(sorted(types))}",
                    file=sys.stderr,
                )
                return EXIT_USAGE
            if args.default == (args.value is not None):
                print("taskd cap: give TYPE and a value, or TYPE --default", file=sys.stderr)
                return EXIT_USAGE
            overrides.pop(args.type, None)
            if not args.default:
                overrides[args.type] = caps.parse_cap(args.value)
            caps.write(settings.data_root, overrides)
    except (caps.CapsError, OSError) as exc:
        print(f"taskd cap: {exc}", file=sys.stderr)
        return EXIT_BAD
    for name, task_type in sorted(types.items()):
        print(f"{name}: {_cap_line(task_type.max_running, overrides, name)}")
    return EXIT_OK


def _caps_to_change(data_root: Path, changing: bool) -> dict[str, int | None]:
    """The caps ops set; a broken file is started afresh when a cap is being set."""
    from taskd import caps

    try:
        return caps.read(data_root)
    except caps.CapsError as exc:
        if not changing:
            raise
        print(f"taskd cap: {exc}; starting afresh from the schemas' caps", file=sys.stderr)
        return {}


def _cap_line(schema_cap: int | None, overrides: dict[str, int | None], name: str) -> str:
    schema = "no cap" if schema_cap is None else f"{schema_cap}"
    if name not in overrides:
        return f"{schema} (the schema's)" if schema_cap is not None else "no cap"
    value = overrides[name]
    return f"{'no cap' if value is None else value} (set by ops; the schema says {schema})"


def cmd_schedules(args: argparse.Namespace) -> int:
    """Each schedule: its cron, user and type, its next three runs and the last due time
    written; a bad one with its error. Exit 1 if any is bad."""
    from datetime import UTC, datetime

    from bridge import files, schedules, watch
    from bridge.passes import schedules as schedule_pass
    from taskd.tasktypes import load_types

    settings = _settings(args)
    settings.require_data_root()
    types = load_types(settings.type_dirs)
    now = datetime.now(UTC).replace(microsecond=0)
    where = settings.data_root / schedule_pass.FOLDER
    bad = 0
    entries = sorted(e.name for e in watch.listed(where) if e.name.endswith(schedules.SUFFIX))
    if not entries:
        print(f"no schedules in {where}")
    for file_name in entries:
        name = file_name[: -len(schedules.SUFFIX)]
        try:
            raw = files.read_regular(where / file_name, schedules.MAX_BYTES)
            schedule = schedules.parse(name, raw, types)
        except (OSError, schedules.ScheduleError) as exc:
            bad += 1
            print(f"{file_name}: BAD: {exc}")
            continue
        record = schedule_pass.records_in(settings.data_root) / name
        last = record.read_text().split(" ", 1)[0].strip() if record.exists() else "never"
        runs = ", ".join(f"{t:%Y-%m-%d %H:%M:%S}Z" for t in schedules.next_runs(schedule, now))
        print(
            f"{file_name}: {schedule.cron!r} user {schedule.user} type {schedule.type} "
            f"(missed: {schedule.missed}); next {runs}; last written {last}"
        )
    return EXIT_BAD if bad else EXIT_OK


def _holder_of(target: Path) -> Path | None:
    """The file that already holds the task-id of `target`, under whatever name it has now
    (the bridge would reject a second file of the same task-id)."""
    from taskcli.status import read_task_files

    task_id, task_type = target.name.rsplit(".", 1)
    user = target.parent.name
    for task in read_task_files(target.parent.parent, 2**31, user):
        if task.name.endswith(f".{task_type}") and task.task_id == task_id:
            return target.parent / task.name
    return None


def _write_in(data: bytes, target: Path) -> None:
    """Written aside under a hidden name, made durable, then renamed in without replacing
    anything: the bridge never sees the file half-written, and never loses an earlier one."""
    from bridge import files

    hidden = target.with_name(f".{target.name}.{os.getpid()}.submit")
    try:
        with open(hidden, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        files.rename_noreplace(hidden, target)
    finally:
        hidden.unlink(missing_ok=True)
    files.fsync_dir(target.parent)


def _find_job_file(settings: Any, job_id: str) -> Path | None:
    """The task file that carries this job id, wherever its name has got to."""
    from taskcli.status import read_task_files
    from taskd import states

    for task in read_task_files(settings.task_queue, settings.max_task_bytes):
        if task.fields.get(states.JOB_ID) == job_id:
            return settings.task_queue / task.user / task.name
    return None


def _celery_state(settings: Any, job_id: str) -> Any:
    import redis as redis_lib

    from taskd import redisconn, states
    from taskd.jobs import parse_meta
    from taskd.roots import serves_another

    client = redisconn.client(settings, 3, 3)
    try:
        elsewhere = serves_another(client, settings.data_root, settings.redis_url)
        if elsewhere is not None:
            return {"error": elsewhere}
        meta: Any = client.get(states.meta_key(job_id))
    except redis_lib.RedisError as exc:
        return {"error": f"Redis cannot be asked: {exc}"}
    return parse_meta(meta)


SHOW_LIMIT = 1 << 24  # a task file the bridge wrote is far smaller; a FIFO or link is refused


def cmd_show(args: argparse.Namespace) -> int:
    from bridge import contract, files
    from taskd import states

    settings = _settings(args)
    path: Path | None = Path(args.target)
    job_id = ""
    if not Path(args.target).is_file():
        job_id, path = args.target, _find_job_file(settings, args.target)
    fields: dict[str, Any] = {}
    if path is not None:
        try:
            fields = contract.parse_content(
                contract.decode_utf8(files.read_regular(path, SHOW_LIMIT))
            )
        except (OSError, ValueError) as exc:
            print(f"{path}: cannot read: {exc}", file=sys.stderr)
            return EXIT_BAD
        job_id = str(fields.get(states.JOB_ID, "")) or job_id
    celery = _celery_state(settings, job_id) if job_id else None
    if not fields and celery is None:
        print(f"{args.target}: neither a task file nor a job id taskd knows", file=sys.stderr)
        return EXIT_BAD
    out = {"path": str(path) if path else None, "file": fields or None, "celery": celery}
    print(json.dumps(out, ensure_ascii=False, indent=2))
    asked = not (isinstance(celery, dict) and "error" in celery)
    return EXIT_OK if fields or asked else EXIT_BAD


def cmd_status(args: argparse.Namespace) -> int:
    from taskcli import status, statusview
    from taskd import caps, redisconn
    from taskd.celeryconf import QUEUES, make_app
    from taskd.tasktypes import load_types

    settings = _settings(args)
    settings.require_data_root()
    queues = set(QUEUES) | {t.queue for t in load_types(settings.type_dirs).values()}
    types = load_types(settings.all_type_dirs)  # a cap set on a type that is off shows too
    client = redisconn.client(settings, 3, 3)
    app = make_app(settings)

    def snapshot() -> status.Status:
        try:
            limits = caps.effective(types, caps.read(settings.data_root))
        except caps.CapsError:
            limits = caps.effective(types, {})  # `taskd cap` says what is wrong with the file
        return status.gather(
            settings.task_queue,
            settings.max_task_bytes,
            client,
            app,
            queues,
            args.user,
            limits=limits,
            redis_url=settings.redis_url,
        )

    if args.watch:
        return _watch(snapshot, statusview.render, args)
    now = snapshot()
    if args.json:
        print(json.dumps(now.to_json(), ensure_ascii=False, indent=2))
    else:
        from rich.console import Console

        Console().print(statusview.render(now))
    return EXIT_BAD if now.redis_error else EXIT_OK


def _watch(snapshot: Any, render: Any, args: argparse.Namespace) -> int:
    """Again and again until Ctrl-C or SIGTERM: JSON lines, or a live terminal view."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.json:
        while True:
            print(json.dumps(snapshot().to_json(), ensure_ascii=False), flush=True)
            if stop.wait(args.interval):
                return EXIT_OK
    from rich.live import Live

    with Live(render(snapshot()), auto_refresh=False) as live:
        while not stop.wait(args.interval):
            live.update(render(snapshot()), refresh=True)
    return EXIT_OK


def cmd_up(args: argparse.Namespace) -> int:
    from taskcli.sample import write_sample
    from taskcli.up import StopSignals, banner, children, supervise

    settings = _settings(args)
    logs.setup(settings.log_format)
    signals = StopSignals()  # before anything starts: a SIGHUP now is a stop, not a death
    signals.install()
    if not args.sample:  # only a first run on a sample archive makes its data root
        settings.require_data_root()
    for sub in ("task_queue", "download", "retrieve", "work_space"):
        (settings.data_root / sub).mkdir(parents=True, exist_ok=True)
    if args.sample and write_sample(settings.mail_db_path, bulk=True):
        print(f"sample archive written to {settings.mail_db_path}", flush=True)
    flower_port = args.flower_port or None
    planned = children(settings, args.workers, flower_port)
    print(banner(settings, planned, flower_port), flush=True)
    ran = supervise(planned.kids, planned.redis.url, signals, settings.mirror_interval)
    return EXIT_OK if ran else EXIT_USAGE


HANDLERS = {
    "bridge": cmd_bridge,
    "worker": cmd_worker,
    "flower": cmd_flower,
    "check": cmd_check,
    "submit": cmd_submit,
    "schedules": cmd_schedules,
    "show": cmd_show,
    "status": cmd_status,
    "up": cmd_up,
    "retry": cmd_retry,
    "cap": cmd_cap,
}


PASSTHROUGH = ("worker", "flower")
OWN_OPTIONS = ("--data-root", "--redis-url")


def split_passthrough(rest: Sequence[str]) -> tuple[list[str], list[str]]:
    """taskd's own options, and the rest verbatim for Celery or Flower (argparse's REMAINDER
    would refuse a rest that starts with an option, like `taskd flower --port=5555`)."""
    ours: list[str] = []
    theirs: list[str] = []
    items = iter(rest)
    for item in items:
        if item in OWN_OPTIONS:
            ours += [item, next(items, "")]
        elif item.startswith(tuple(f"{o}=" for o in OWN_OPTIONS)):
            ours.append(item)
        else:
            theirs.append(item)
    return ours, theirs


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in PASSTHROUGH:
        ours, theirs = split_passthrough(argv[1:])
        args = parser.parse_args([argv[0], *ours])
        args.extra = theirs
        return args
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        return HANDLERS[args.command](args)
    except ValueError as exc:  # settings errors say what to fix
        print(f"taskd: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
