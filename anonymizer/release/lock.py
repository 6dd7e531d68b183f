"""DEST's publish lock: one publisher per release location at a time, so that two publishes (of one run id or of
two) never interleave and LATEST moves by compare-and-swap.

Locally an flock on DEST/.publish.lock: the kernel frees it when its holder dies. On S3 an object
DEST/.publish.lock holding a lease, created by a conditional PUT (If-None-Match: *), renewed by its holder
(If-Match on its own ETag) while it works, and taken over (If-Match on the expired holder's ETag) once the
lease ran out: a publisher killed mid-release holds up the next one for one lease at most. The lease is
judged by the clocks of the machines involved: keep them within a few seconds of each other (NTP).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

from anonymizer.storage import Location

LOCK = ".publish.lock"
LEASE_S = 120.0  # an S3 lease; renewed every quarter of it
WAIT_S = 1800.0  # how long a publisher waits for another one to finish before it gives up


class PublishLockError(RuntimeError):
    pass


@contextmanager
def publish_lock(dest: Location, wait_s: float = WAIT_S, lease_s: float = LEASE_S) -> Iterator[Callable[[], None]]:
    """Hold DEST's publish lock; yields a check that raises PublishLockError if the lock was lost (an S3 lease
    that could not be renewed): call it before each step that must not be done without the lock."""
    if dest.is_local:
        with _flock(dest, wait_s):
            yield lambda: None
        return
    lease = _Lease(dest, lease_s)
    lease.acquire(wait_s)
    try:
        yield lease.check
    finally:
        lease.release()


@contextmanager
def _flock(dest: Location, wait_s: float) -> Iterator[None]:
    os.makedirs(dest.base, exist_ok=True)
    path = os.path.join(dest.base, LOCK)
    deadline = time.monotonic() + wait_s
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_fd(fd, path, deadline)
            held = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        os.close(fd)  # the previous holder removed the file as it let go: lock the one there now
    try:
        yield
    finally:
        os.unlink(path)  # still holding it: whoever opened this file before sees it gone and retries
        os.close(fd)


def _lock_fd(fd: int, path: str, deadline: float) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() > deadline:
            raise PublishLockError(f"{path} is held by another publisher: gave up waiting")
        time.sleep(0.02)


class _Lease:
    def __init__(self, dest: Location, lease_s: float) -> None:
        self.dest, self.lease_s = dest, lease_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires": time.time() + self.lease_s}).encode()

    def acquire(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            etag = self.dest.write_conditional(LOCK, self._body(), None)
            holder: dict = {}
            if etag is None:
                held = self.dest.read_versioned(LOCK)
                if held is not None:  # (None: let go meanwhile, try again)
                    holder = _parse(held[0])
                    if holder.get("expires", 0) < time.time():  # its holder died: take the lease over
                        etag = self.dest.write_conditional(LOCK, self._body(), held[1])
            if etag is not None:
                self.etag = etag
                self._renewer = threading.Thread(target=self._renew, daemon=True, name="publish-lease")
                self._renewer.start()
                return
            if time.monotonic() > deadline:
                raise PublishLockError(f"{self.dest.uri}/{LOCK} is held by {holder.get('owner', '?')}: gave up waiting")
            time.sleep(0.5 + random.random())

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                etag = self.dest.write_conditional(LOCK, self._body(), self.etag)
            except Exception:  # noqa: BLE001 - a failed renewal is retried until the lease runs out
                continue
            if etag is None:
                self.lost = True
                return
            self.etag = etag

    def check(self) -> None:
        if self.lost:
            raise PublishLockError(f"lost the publish lease on {self.dest.uri}/{LOCK} (renewals failed): stopped "
                                   "before writing the manifest or LATEST")

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        held = self.dest.read_versioned(LOCK)
        if held is not None and held[1] == self.etag:
            self.dest.discard(LOCK)


def _parse(data: bytes) -> dict:
    try:
        out = json.loads(data)
        return out if isinstance(out, dict) and isinstance(out.get("expires"), (int, float)) else {}
    except ValueError:
        return {}  # not a lease this tool wrote: treated as expired
