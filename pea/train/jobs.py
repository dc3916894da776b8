"""Training as a Ray job, through the head's Jobs API, for a profile with `ray.jobs_address`.

The job's driver (pea.train.entry) runs on the cluster, so a multi-day run does not hang on the process that
submitted it: a restarted Prefect worker, a cancelled flow run or a closed terminal leave it running, and only
`stop_training` (`pea train --stop`) stops it. A run's attempts are the jobs train-<lang>-<run name>-<n>; a call
finds the run's latest attempt (by its metadata) and
- attaches to it while it is PENDING or RUNNING: follows its status and log until it ends;
- returns its result when it SUCCEEDED on the same request;
- else submits attempt n+1, which Ray Train resumes from the run's last checkpoint.
Two callers that submit the same attempt at once ask for the same submission id: the job server takes one, and
the other caller attaches to it. So callers of one run never wait for each other on its lock (pea.locks); the
job's driver holds the lock while it trains, which keeps an in-process run of the same name off its checkpoints.

The dashboard shows every job's entrypoint, metadata and runtime env to whoever can open it, so none of them
holds a secret: the request carries the profile as `pea profile` shows it (a URI's password as ***), and the
driver takes the passwords from the cluster's own profile (entry.cluster_profile).
"""

import asyncio
import hashlib
import logging
import re
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from pea.errors import PeaError
from pea.languages import Language
from pea.layout import train_dir
from pea.presets import Preset
from pea.profiles import Profile
from pea.train.config import TrainConfig, TrainSwitches
from pea.train.run import TrainResult

POLL_S = 5.0  # how often a caller asks for its job's status
UNREACHABLE_S = 10 * 60  # how long a caller keeps trying a Jobs API that does not answer (a restarting head)
OUTCOME = "job-outcome.json"  # in train/<run name>/: how the run's last attempt ended (result or error)
LANG, RUN, ATTEMPT, REQUEST = "pea.lang", "pea.run_name", "pea.attempt", "pea.request"  # a job's metadata
ACTIVE = {"PENDING", "RUNNING"}
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the colours Ray gives its workers' prefixes
_PREFIX_ONLY = re.compile(r"\([^()]* pid=\d+\)\s*")  # a worker's prefix alone, before a line its bar rewrites

log = logging.getLogger("pea.train")
Emit = Callable[[str], None]


class JobRequest(BaseModel):
    """What a training job is asked to do: the driver's argument, shown on the dashboard (so no secrets)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: dict  # Profile.model_dump(mode="json"): every URI's password as ***
    lang: str
    preset: str
    train: TrainConfig  # its run name set
    switches: TrainSwitches
    override_config: bool

    def digest(self) -> str:
        """An attempt answers a later call only if it was asked the same."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def entrypoint(submission_id: str, request: JobRequest) -> str:
    return f"python -m pea.train.entry {submission_id} {shlex.quote(request.model_dump_json())}"


def train_as_job(profile: Profile, language: Language, preset: Preset, cfg: TrainConfig, switches: TrainSwitches,
                 override_config: bool, emit: Emit | None = None) -> TrainResult:
    """Run (or attach to, or read the result of) training run `cfg.run_name` as a Ray job; its log lines go to
    `emit` (default: this module's logger). The job reports progress as log lines, not as a bar."""
    request = JobRequest(profile=profile.model_dump(mode="json"), lang=language.code, preset=preset.name, train=cfg,
                         switches=switches.model_copy(update={"progress": "log"}), override_config=override_config)
    jobs = RunJobs(client(profile), language.code, cfg.run_name)
    info = jobs.run(lambda submission_id: entrypoint(submission_id, request), request.digest(), emit or log.info)
    return _outcome(profile, jobs, info)


def stop_training(profile: Profile, lang: str, run_name: str) -> str | None:
    """Stop the run's job if one is pending or running (Ray Train keeps its checkpoints: the next call resumes
    it); its submission id, or None."""
    return RunJobs(client(profile), lang, run_name).stop()


def client(profile: Profile):
    from ray.job_submission import JobSubmissionClient

    address = profile.ray.jobs_address
    if not address:
        raise PeaError(f"profile {profile.name!r} has no Ray Jobs API (ray.jobs_address): its training runs in the "
                       "process that started it", "stop that process (Ctrl-C), or set ray.jobs_address "
                       "(PEA_RAY__JOBS_ADDRESS) to the Ray head's dashboard, http://head:8265")
    try:
        return JobSubmissionClient(address)
    except (OSError, RuntimeError) as e:
        raise PeaError(f"the Ray Jobs API at {address} does not answer ({_first_line(e)})",
                       "check ray.jobs_address (PEA_RAY__JOBS_ADDRESS), and that the head's dashboard port is "
                       "reachable from here") from e


@dataclass(frozen=True)
class RunJobs:
    """The Ray jobs (attempts) of one training run, by language and run name."""

    client: object  # a JobSubmissionClient
    lang: str
    run_name: str

    def latest(self):
        """The run's last attempt (JobDetails), or None."""
        mine = [job for job in _call(self.client.list_jobs)
                if job.metadata.get(LANG) == self.lang and job.metadata.get(RUN) == self.run_name]
        return max(mine, key=lambda job: int(job.metadata[ATTEMPT]), default=None)

    def run(self, entrypoint: Callable[[str], str], request: str, emit: Emit):
        """The run's job for `request` (a digest), attached to or submitted, followed until it ends."""
        latest = self.latest()
        status = str(latest.status) if latest is not None else None
        if status in ACTIVE:
            if latest.metadata.get(REQUEST) != request:
                raise PeaError(f"run {self.run_name!r} is training as Ray job {latest.submission_id}, started with "
                               "another config or profile", "wait for it to end, stop it (pea train --stop), or use "
                               "another run name")
            emit(f"attaching to training job {latest.submission_id} ({status.lower()})")
            return self.follow(latest.submission_id, emit, attached=True)
        if status == "SUCCEEDED" and latest.metadata.get(REQUEST) == request:
            return latest
        attempt = int(latest.metadata[ATTEMPT]) + 1 if latest is not None else 1
        submission_id, attached = self.submit(entrypoint, request, attempt)
        emit(f"{'attaching to' if attached else 'submitted'} training job {submission_id}")
        return self.follow(submission_id, emit, attached)

    def submit(self, entrypoint: Callable[[str], str], request: str, attempt: int) -> tuple[str, bool]:
        """Submit `attempt`; (its submission id, whether another caller had just submitted it)."""
        submission_id = f"train-{self.lang}-{self.run_name}-{attempt}"
        metadata = {LANG: self.lang, RUN: self.run_name, ATTEMPT: str(attempt), REQUEST: request}
        try:
            _call(self.client.submit_job, entrypoint=entrypoint(submission_id), submission_id=submission_id,
                  metadata=metadata)
        except RuntimeError as e:  # the id is taken: by the caller that won the race, or refused for a reason
            try:
                _call(self.client.get_job_info, submission_id)
            except RuntimeError:
                raise PeaError(f"the Ray Jobs API refused training job {submission_id} ({_first_line(e)})",
                               "see the Ray head's dashboard log") from e
            return submission_id, True
        return submission_id, False

    def follow(self, submission_id: str, emit: Emit, attached: bool):
        """Wait for the job to end, its log into `emit` (after attaching, only what comes next); its final
        JobDetails. An interrupt (Ctrl-C, a cancelled flow run, a stopping worker) ends the waiting, not the job."""
        seen = len(_call(self.client.get_job_logs, submission_id)) if attached else 0
        tail = _LogTail(self.client, submission_id, emit, seen)
        tail.start()
        try:
            while str((info := _call(self.client.get_job_info, submission_id)).status) in ACTIVE:
                time.sleep(POLL_S)
        except BaseException:
            log.warning("stopped waiting for training job %s, which goes on (pea train --lang %s --run-name %s --stop "
                        "stops it)", submission_id, self.lang, self.run_name)
            raise
        finally:
            tail.ended.set()
        tail.join(timeout=30)  # the last lines: the server ends the stream once the job has ended
        return info

    def stop(self) -> str | None:
        latest = self.latest()
        if latest is None or str(latest.status) not in ACTIVE:
            return None
        _call(self.client.stop_job, latest.submission_id)
        return latest.submission_id


class _LogTail(threading.Thread):
    """A job's log (the Jobs API's websocket) into `emit`, line by line, from character `seen` on. The server
    sends a log from its start, so a dropped connection is opened again and what was seen is skipped."""

    def __init__(self, client, submission_id: str, emit: Emit, seen: int):
        super().__init__(name=f"log of {submission_id}", daemon=True)
        self.client, self.submission_id, self.emit, self.seen = client, submission_id, emit, seen
        self.ended = threading.Event()

    def run(self) -> None:
        while not self.ended.is_set():
            try:
                asyncio.run(self._tail())
                return
            except Exception as e:  # noqa: BLE001 -- the status poll decides how the job went; the log is a view
                log.debug("log of %s interrupted: %s", self.submission_id, e)
                self.ended.wait(POLL_S)

    async def _tail(self) -> None:
        at, partial = 0, ""
        async for chunk in self.client.tail_job_logs(self.submission_id):
            new, at = chunk[max(0, self.seen - at):], at + len(chunk)
            self.seen = max(self.seen, at)
            *lines, partial = (partial + new).split("\n")
            for line in lines:
                self._emit(line)
        self._emit(partial)

    def _emit(self, line: str) -> None:
        """A line as a terminal would show it: without colours, and of a bar only its last state."""
        line = _TERMINAL_CODES.sub("", line).rsplit("\r", 1)[-1].rstrip()
        if line.strip() and not _PREFIX_ONLY.fullmatch(line):
            self.emit(line)


def _call(method, *args, **kwargs):
    """A Jobs API call that outlasts a restarting head or a network blip (tried again for UNREACHABLE_S)."""
    deadline = time.monotonic() + UNREACHABLE_S
    while True:
        try:
            return method(*args, **kwargs)
        except OSError as e:  # requests' connection errors among them
            if time.monotonic() > deadline:
                raise PeaError(f"the Ray Jobs API stopped answering ({_first_line(e)})",
                               "once the Ray head is back, run again with the same run name: it attaches to the "
                               "job if it still runs, else continues from the last checkpoint") from e
            log.warning("the Ray Jobs API does not answer (%s); trying again", _first_line(e))
            time.sleep(POLL_S)


def _outcome(profile: Profile, jobs: RunJobs, info) -> TrainResult:
    """The ended job's TrainResult, or its error, as its driver left them in the run's folder; a job that left
    none (killed, or failed before it could write) is told by Ray's own message."""
    storage, parts = profile.storage(), train_dir(jobs.lang, jobs.run_name, OUTCOME)
    outcome = storage.read_json(*parts) if storage.exists(*parts) else {}
    if outcome.get("submission_id") == info.submission_id:
        if str(info.status) == "SUCCEEDED" and "result" in outcome:
            return TrainResult(**outcome["result"])
        if "error" in outcome:
            raise PeaError(outcome["error"]["problem"], outcome["error"]["fix"])
    raise PeaError(f"training job {info.submission_id} {str(info.status).lower()}: {_first_line(info.message or '')}",
                   f"see `ray job logs {info.submission_id} --address {profile.ray.jobs_address}`; run again with the "
                   "same run name to continue from the last checkpoint")


def _first_line(text) -> str:
    return str(text).strip().splitlines()[0] if str(text).strip() else ""
