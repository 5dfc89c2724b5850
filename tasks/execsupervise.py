"""Between a worker and an EXEC program: `python -I execsupervise.py <worker-pid> <program> ...`.

It runs the program in a process group of its own and makes sure nothing of that group outlives
the task, however the task ends:
- the program exits: whatever it left running in its group is killed (so its output closes and
  its exit code is the task's), and this exits with the program's code, or by its signal;
- SIGTERM (a cancel, a timeout, a time limit: the worker's `stop_group`): the group gets SIGTERM,
  then SIGKILL after `GRACE_S`;
- the worker's process dies (SIGKILL, out of memory): the kernel sends this SIGTERM
  (PR_SET_PDEATHSIG), and the group is ended as above.

Standard library only, run isolated (`-I`): it starts in milliseconds, and the program's parent
holds no more of the worker's environment than the program itself was given.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1


def _end_group(group: int) -> None:
    """SIGTERM to the program's group, SIGKILL to what is left after the grace."""
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def main(argv: list[str]) -> int:
    worker, command = int(argv[0]), argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != worker:  # the worker died before the request took hold
        return 137
    program = subprocess.Popen(command, process_group=0)  # noqa: S603 - checked by the worker
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        _end_group(program.pid)

    signal.signal(signal.SIGTERM, stop)
    code = program.wait()
    if not stopping:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(program.pid, signal.SIGKILL)  # what it left behind in its group
    if code < 0:  # end the way the program ended, so the worker reads the same signal
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
