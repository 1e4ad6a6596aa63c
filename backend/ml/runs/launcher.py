"""Starting worker processes (`worker`) for a parent, and keeping one ready.

A worker's stdin is one end of a Unix socket pair: the parent sends its one request line
there, with descriptors (the training lock of a run it hands over) as SCM_RIGHTS ancillary
data, when it has one; the worker imports its libraries first. So a worker can be started
before there is a request (`Spare`), and a run handed to it at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from backend.ml.config import REPO_ROOT, Settings

logger = logging.getLogger(__name__)


# A worker started this way is a spare kept ahead of need: it reads production while it
# waits (`preload.py`). One started for a request at hand goes straight to its job.
AHEAD = "--ahead"


class Spare:
    """A worker process started ahead of need: it imports its libraries, then waits for its
    one request (`send`). `process` is the child, read with `collect` as any worker. An
    `ahead` one also reads production while it waits (`preload.py`)."""

    def __init__(self, settings: Settings, *, ahead: bool = False) -> None:
        env = {**os.environ, **settings.as_environment(),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                           os.environ.get("PYTHONPATH")]))}
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process: subprocess.Popen[str] = subprocess.Popen(
                [sys.executable, "-m", "backend.ml.runs.worker", *([AHEAD] if ahead else [])],
                cwd=REPO_ROOT, env=env,
                stdin=theirs.fileno(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._channel: socket.socket | None = ours

    @property
    def alive(self) -> bool:
        return self._channel is not None and self.process.poll() is None

    def send(self, request: Mapping[str, Any], *, fds: Sequence[int] = ()) -> None:
        """Give the worker its request (and descriptors); once only. OSError when the worker
        is gone (BrokenPipeError, ConnectionResetError)."""
        channel, self._channel = self._channel, None
        if channel is None:
            raise RuntimeError("this worker already has its request")
        payload = (json.dumps(dict(request)) + "\n").encode("utf-8")
        with channel:
            sent = socket.send_fds(channel, [payload], list(fds))
            if sent < len(payload):
                channel.sendall(payload[sent:])

    def discard(self) -> None:
        """End a worker that never got a request (it exits at once on the closed socket)."""
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        with contextlib.suppress(OSError):
            self.process.kill()
        self.process.communicate()


class Launcher:
    """Starts the workers of one parent. With `keep_spare`, it keeps one `Spare` ready, so a
    run does not wait for an interpreter to start and import pandas, scikit-learn and skops
    (seconds, on two busy cores): the first one `first_after` seconds after it is built,
    then a new one `again_after` seconds after each run that used one ends (`ended`), so a
    spare never competes with a run for the cores. A spare found dead is replaced by a
    worker started then. Without `keep_spare`, every worker is started when needed.

    Deliberately not kept: more than one spare, and a spare for the periodic check (it runs
    once an hour; nobody waits for it). A spare costs one idle process per web process
    (about 230 MB resident, 150 MB of it its own, and about 60 MB more for the production
    models it reads while it waits); `close()` ends it, and it exits by itself when its
    parent goes away.
    """

    def __init__(self, settings: Settings, *, keep_spare: bool = False,
                 first_after: float = 30.0, again_after: float = 5.0) -> None:
        self.settings = settings
        self.keep_spare = keep_spare
        self.again_after = again_after
        self._spare: Spare | None = None
        self._timer: threading.Timer | None = None
        self._closed = False
        self._lock = threading.Lock()
        if keep_spare:
            self._arm(first_after)

    def launch(self, request: Mapping[str, Any], *,
               fds: Sequence[int] = ()) -> subprocess.Popen[str]:
        """A worker running `request` (with `fds` handed over): the spare if one is ready,
        else one started now."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            if spare.alive:
                try:
                    spare.send(request, fds=fds)
                    return spare.process
                except OSError as exc:
                    logger.warning("the spare worker %d is gone (%s); starting another",
                                   spare.process.pid, exc)
            spare.discard()
        return spawn(self.settings, request, fds=fds)

    def ended(self) -> None:
        """A run this launcher started has ended: prepare a spare for the next one."""
        if self.keep_spare:
            self._arm(self.again_after)

    def close(self) -> None:
        """No more spares; the one waiting (if any) is ended."""
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if spare is not None:
            spare.discard()

    @property
    def spare(self) -> Spare | None:
        """The worker waiting for the next run, if any (perhaps still importing)."""
        with self._lock:
            return self._spare

    @property
    def spare_ready(self) -> bool:
        spare = self.spare
        return spare is not None and spare.alive

    def _arm(self, delay: float) -> None:
        with self._lock:
            if self._closed or self._spare is not None or self._timer is not None:
                return
            # The timer holds the launcher weakly: one nobody uses any more (a test's, an
            # app's that was not closed) starts no spare.
            self._timer = threading.Timer(delay, _fill_spare, args=(weakref.ref(self),))
            self._timer.name = "spare-worker"
            self._timer.daemon = True
            self._timer.start()

    def _fill(self) -> None:
        with self._lock:
            self._timer = None
            if self._closed or self._spare is not None:
                return
        try:
            spare = Spare(self.settings, ahead=True)
        except Exception:
            logger.exception("cannot start a spare worker; runs start their own")
            return
        with self._lock:
            kept = not self._closed and self._spare is None
            if kept:
                self._spare = spare
        if not kept:  # closed (or filled) meanwhile
            spare.discard()


def _fill_spare(launcher: weakref.ref[Launcher]) -> None:
    alive = launcher()
    if alive is not None:
        alive._fill()


def spawn(settings: Settings, request: Mapping[str, Any], *,
          fds: Sequence[int] = ()) -> subprocess.Popen[str]:
    """Start a worker on `request` (with `fds` handed over) with these settings; it answers
    on its stdout."""
    spare = Spare(settings)
    try:
        spare.send(request, fds=fds)
    except OSError:
        pass  # it died at once; `collect` reports how, from its exit code and stderr
    return spare.process
