"""One run at a time per (language, stage): a lock in the storage root.

Two runs on the same language at once (two `pea train-language --lang ko`, two CLI stage commands, a scheduled
deployment overlapping a manual run) would both do all the work and race on the same done-marks and manifests.
So every stage that writes per-language outputs first takes `stage_lock`: a second taker waits up to WAIT_S,
reporting who holds the lock, then fails with one PeaError line naming the holder (host, pid, command, flow
run, since when) and how to free the lock. A run that got the lock after waiting runs the stage as usual, and
the stage, which skips finished work, finds it done.

The lock lives beside the data it guards, <root>/<lang>/.locks/<stage>.json, so every machine that sees the root
sees the lock (a leading '.' is never a user's name, see pea.names):
- local root: `fcntl.flock` on a file that stays. The kernel releases it when its holder exits, however it
  exits (SIGKILL included), so it never goes stale; the file's content only says who holds it. The descriptor
  is closed on exec, so only a child forked without exec (and still alive) could keep it.
- S3 root: an object created by a conditional write (If-None-Match: *, atomic on S3, MinIO and moto). The
  holder rewrites it every LEASE_S/4 (If-Match: its last ETag); one not rewritten for LEASE_S, by the server's
  own clock (its Date against the object's Last-Modified), is stale, and the next taker replaces it by a write
  conditional on the stale ETag, so of two takers only one wins. Release deletes it on the same condition, so a
  holder whose lock was taken over never deletes its successor's.
"""

import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from pea.errors import PeaError
from pea.layout import lock_dir
from pea.progress import Progress, duration
from pea.storage import Storage

WAIT_S = 10 * 60  # how long a second run waits for the holder before it fails
LEASE_S = 2 * 60  # S3: a lock its holder has not refreshed for this long is stale (a killed run's lock)
POLL_S = 2.0  # how often a waiting run tries again
REPORT_S = 60.0  # how often a waiting run says what it waits for

log = logging.getLogger("pea.locks")


def _logged(message: str, fraction: float | None = None) -> None:
    """The waiting lines of a stage that has no progress of its own."""
    log.warning(message)


@contextmanager
def stage_lock(storage: Storage, lang: str, stage: str, wait_s: float = WAIT_S, lease_s: float = LEASE_S,
               progress: Progress = _logged) -> Iterator[None]:
    """Hold the lock of `lang`'s `stage` (a stage name, plus the source, preset or run its output belongs to)
    for the block; wait up to `wait_s` for another holder, then raise a PeaError naming it."""
    parts = lock_dir(lang, f"{stage}.json")
    lock = _LocalLock(storage, parts) if storage.is_local else _S3Lock(storage, parts, lease_s)
    _take(lock, f"the {lang} {stage} stage", wait_s, progress)
    try:
        yield
    finally:
        lock.release()


def _take(lock, what: str, wait_s: float, progress: Progress) -> None:
    start = time.monotonic()
    deadline, next_report = start + wait_s, start
    while (holder := lock.try_take()) is not None:
        now = time.monotonic()
        if now >= deadline:
            waited = f" (waited {duration(now - start)})" if wait_s else ""
            raise PeaError(f"{what} is locked by {_describe(holder)}{waited}", lock.fix(holder))
        if now >= next_report:
            progress(f"waiting for {what}: locked by {_describe(holder)}; giving up in {duration(deadline - now)}")
            next_report = now + REPORT_S
        time.sleep(min(POLL_S, deadline - now))


def _me() -> dict:
    """Who takes a lock, as the next taker is told: a flow run started by a Prefect worker has its id in the
    environment; a CLI run is known by its command line."""
    command = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    return {"host": socket.gethostname(), "pid": os.getpid(), "command": command[:200].replace("\n", " "),
            "flow_run": os.environ.get("PREFECT__FLOW_RUN_ID"),
            "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}


def _describe(holder: dict) -> str:
    """`pid 123 on host-a (pea bucket --lang ko), since 2026-05-01 12:00:00 UTC, last heartbeat 20s ago`."""
    if not holder.get("pid"):
        return "another run (it has not recorded who it is yet)"
    about = "; ".join(filter(None, [holder.get("command"), holder.get("flow_run") and f"flow run {holder['flow_run']}"]))
    text = f"pid {holder['pid']} on {holder.get('host', '?')}" + (f" ({about})" if about else "")
    text += f", since {holder['since']}" if holder.get("since") else ""
    return text + (f", last heartbeat {duration(holder['age_s'])} ago" if "age_s" in holder else "")


def _stop_it(holder: dict) -> str:
    return f"kill {holder['pid']} on {holder.get('host', '?')}" if holder.get("pid") else "find it and stop it"


class _LocalLock:
    """flock on <root>/<lang>/.locks/<stage>.json; the kernel frees it with its holder."""

    def __init__(self, storage: Storage, parts: tuple[str, ...]):
        storage.makedirs(*parts[:-1])
        self.path = storage.path(*parts)
        self.fd: int | None = None

    def try_take(self) -> dict | None:
        """Take the lock and return None, or return who holds it ({} when not known yet)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self._holder()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
        self.fd = fd
        return None

    def _holder(self) -> dict:
        """Who holds the lock, as its file says. A new holder writes the file just after taking the lock, so an
        empty or half-written one is read again (for up to a second) before the holder is called unknown."""
        for _ in range(20):
            try:
                with open(self.path, encoding="utf-8") as f:
                    return json.load(f)
            except (OSError, ValueError):
                time.sleep(0.05)
        return {}

    def fix(self, holder: dict) -> str:
        return f"wait for that run to finish, or stop it ({_stop_it(holder)}): a stopped run frees the lock at once"

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


class _S3Lock:
    """A conditionally written object with a heartbeat; see the module's docstring."""

    def __init__(self, storage: Storage, parts: tuple[str, ...], lease_s: float):
        import boto3

        self.bucket, _, self.key = storage.path(*parts).partition("/")
        self.uri = storage.uri(*parts)
        self.lease_s = lease_s
        # a session of its own: boto3's default session is not safe to share between threads
        self.s3 = boto3.session.Session().client("s3", endpoint_url=storage.fs.client_kwargs.get("endpoint_url"))
        self.me, self.etag, self.beats = _me(), None, 0
        self.stop = threading.Event()
        self.heartbeat = threading.Thread(target=self._beat, name=f"lock {self.key}", daemon=True)

    def try_take(self) -> dict | None:
        """Take the lock (a new one, or a stale one over) and return None, or return who holds it."""
        holder = self._take_or_holder()
        if holder is None:
            self.heartbeat.start()
        return holder

    def _take_or_holder(self) -> dict | None:
        if self._put(IfNoneMatch="*"):
            return None
        found = self._read()
        if found is None:  # released since the write above: the next try may take it
            return {}
        holder, etag = found
        if holder["age_s"] <= self.lease_s or not self._put(IfMatch=etag):  # fresh, or another taker was faster
            return holder
        log.warning("took over the stale lock %s of %s", self.uri, _describe(holder))
        return None

    def _put(self, **condition) -> bool:
        """Write our record under `condition`; False when the condition failed (someone else holds or took it)."""
        from botocore.exceptions import ClientError

        self.beats += 1
        body = json.dumps(self.me | {"beat": self.beats}).encode()  # a new ETag at every write
        try:
            self.etag = self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"]
            return True
        except ClientError as e:
            if _lost_race(e):
                return False
            raise PeaError(f"cannot write the lock {self.uri}: {e}",
                           "the storage root must allow conditional writes (If-None-Match, If-Match), as AWS S3 "
                           "and MinIO do, and this run's credentials must allow PutObject and DeleteObject") from e

    def _read(self) -> tuple[dict, str] | None:
        """(holder, its ETag) with the record's age by the server's clock, or None when there is none."""
        from botocore.exceptions import ClientError

        try:
            got = self.s3.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if _status(e) == 404:
                return None
            raise
        try:
            holder = json.loads(got["Body"].read())
        except ValueError:
            holder = {}
        date = got["ResponseMetadata"]["HTTPHeaders"].get("date")
        now = parsedate_to_datetime(date) if date else datetime.now(timezone.utc)
        return holder | {"age_s": max(0.0, (now - got["LastModified"]).total_seconds())}, got["ETag"]

    def _beat(self) -> None:
        while not self.stop.wait(self.lease_s / 4):
            try:
                if not self._put(IfMatch=self.etag):
                    log.error("lost the lock %s: another run took it over as stale", self.uri)
                    return
            except Exception as e:  # noqa: BLE001 -- a missed beat is retried; the lease allows three more
                log.warning("could not refresh the lock %s: %s", self.uri, e)

    def fix(self, holder: dict) -> str:
        return (f"wait for that run to finish, or stop it ({_stop_it(holder)}): a stopped run's lock expires "
                f"{duration(self.lease_s)} after its last heartbeat; to free it at once, delete {self.uri}")

    def release(self) -> None:
        from botocore.exceptions import ClientError

        self.stop.set()
        self.heartbeat.join()
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except ClientError as e:
            if not _lost_race(e):  # else it was taken over: it is another run's now
                log.warning("the lock %s was not deleted (%s); it expires after %s", self.uri, e, duration(self.lease_s))


def _status(e) -> int | None:
    return e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _lost_race(e) -> bool:
    """412: the condition failed; 409: a concurrent conditional write; 404: the object went (If-Match)."""
    return _status(e) in (404, 409, 412)
