"""Workers forked from the supervisor instead of started as new programs.

A worker started with `python -m b2bua.worker` builds its own copy of the
interpreter's heap and of the pjsua2 bindings' Python classes: about 17 MB
of private memory before its first call. Forked from a supervisor that has
already imported them, it shares those pages copy-on-write and keeps about
6 MB of its own (measured with 40 idle workers, docs/performance.md).

The supervisor forks only while it runs a single thread, so that no lock
held by another thread is copied into the child in its held state.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import subprocess
import time
import traceback
from typing import Iterable

# Imported here, before any fork, so that every worker shares these pages.
from b2bua import worker as worker_program

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PR_SET_NAME = 15
# The kernel keeps 15 bytes of a thread name; `ps -o comm` and top show it.
PROCESS_NAME_LIMIT = 15
WAIT_POLL_S = 0.05


class ForkedWorker:
    """A forked worker process, with the subset of Popen the supervisor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Already reaped elsewhere; its status is lost.
            self.returncode = 255
            return self.returncode
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            time.sleep(WAIT_POLL_S)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        # A reaped pid may belong to another process by now.
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def die_with_parent() -> None:
    """Ask the kernel to send SIGTERM to this process when its parent dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def freeze_shared_objects() -> None:
    """Move the supervisor's objects out of the garbage collector's reach.

    A collection in a child writes to every object it visits, which would
    copy the shared pages into each worker one by one.
    """
    gc.collect()
    gc.freeze()


def fork_worker(worker_id: str, runtime_file: str, index: int,
                inherited_fds: Iterable[int]) -> ForkedWorker:
    """Fork a child that runs worker `index` and return its handle.

    `inherited_fds` are the supervisor's own descriptors (its lock file, the
    edge's log pipes and their selector), which the child closes so that it cannot keep them open
    after the supervisor is gone.
    """
    supervisor_pid = os.getpid()
    pid = os.fork()
    if pid:
        return ForkedWorker(pid)
    exit_code = 1
    try:
        _prepare_child(worker_id, supervisor_pid, inherited_fds)
        exit_code = worker_program.main(["--runtime", runtime_file,
                                         "--index", str(index)])
    except SystemExit as stop:
        exit_code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child must never return
        traceback.print_exc()
    finally:
        logging.shutdown()
        os._exit(exit_code)


def _prepare_child(worker_id: str, supervisor_pid: int,
                   inherited_fds: Iterable[int]) -> None:
    # The supervisor's handlers would stop the supervisor's loop, which this
    # process no longer runs; the worker installs its own.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    die_with_parent()
    if os.getppid() != supervisor_pid:
        # The supervisor died before the death signal was armed.
        os._exit(1)
    name = f"b2bua-{worker_id}".encode()[:PROCESS_NAME_LIMIT]
    ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    for fd in inherited_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
