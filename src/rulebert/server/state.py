"""What ``rulebert serve --state-dir S`` keeps between requests and restarts.

- ``S/rules.sqlite3``: the stored rules (:class:`rulebert.server.rule_store.RuleStore`);
- ``S/jobs.sqlite3``: adaptation jobs (:class:`rulebert.server.job_store.JobStore`), so that a restart still
  answers for them; one the last server left unfinished is marked failed, its staging folder removed;
- ``S/server.lock``: held (``flock``) by the one server using S, its pid written in it: a second server on S
  would take the first one's running job for a crashed one, fail it and delete its staging folder;
- ``S/models/<UTC time>-<job>/``: adapted model dirs, newest last; a restart serves the newest one that
  descends from the ``--model-dir`` given (and verifies), else ``--model-dir`` itself;
- one adaptation job at a time (:class:`Jobs`), run in a background thread while scoring goes on with the
  current model; when it succeeds, the new model is loaded first and then swapped in with one assignment
  (:class:`ServedModel`), so every request is scored by one whole model, old or new.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rulebert.core.errors import RulebertError
from rulebert.core.files import tighten
from rulebert.domain.rules import StoredRule, is_rule_id
from rulebert.model.model_dir import lineage_root, verify_model_dir
from rulebert.server.job_store import JobStore
from rulebert.server.rule_store import RuleStore, UnreadableRule
from rulebert.server.schema import Rule
from rulebert.server.validation import InvalidBody, error_body

logger = logging.getLogger(__name__)

LOCK_FILE = "server.lock"
RULES_DB = "rules.sqlite3"
JOBS_DB = "jobs.sqlite3"
MODELS_DIR = "models"
KEEP_MODELS = 3  # adapted model dirs kept under S/models (the served one is always kept)
KEEP_JOBS = 100  # finished jobs kept in memory for GET /v1/jobs/{id} (older ones: from jobs.sqlite3)
STAGING_PREFIX = ".adapting-"  # training.adapt assembles a model dir here, then renames it into place


def model_name(model_dir: Path, record: dict[str, Any]) -> str:
    """The model dir's name plus the start of its weights' hash: tells two models of one name apart."""
    hashes = "".join(sorted((record.get("weights_sha256") or {}).values()))
    return f"{model_dir.name}@{hashes[:12]}" if hashes else model_dir.name


def checkpoint_name(base_model: object) -> str | None:
    """A base checkpoint as a name: a local folder's last part, never its absolute path (it tells about
    the host); a hub name (``org/model``) as it is."""
    if not isinstance(base_model, str) or not base_model:
        return None
    if base_model.startswith(("/", "~", ".")) or "\\" in base_model or base_model.count("/") > 1:
        return Path(base_model.replace("\\", "/")).name or base_model
    return base_model


@dataclass
class Served:
    """One loaded model, with the lock that serialises its use (a model instance is not re-entrant)."""

    scorer: Any
    name: str
    record: dict[str, Any]
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of(cls, scorer: Any) -> Served:
        record = getattr(scorer, "record", None) or {}
        return cls(scorer, model_name(Path(scorer.model_dir), record), record)


def lock_state_dir(folder: Path) -> IO[str]:
    """Hold ``folder`` for this process: an exclusive ``flock`` on ``folder/server.lock``, with this pid
    written in it. The open file holds the lock (keep it); the kernel drops it when the process ends,
    however it ends, so a crash leaves nothing to clean. Another holder is a one-line error naming its pid."""
    import fcntl

    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise RulebertError(f"{folder / LOCK_FILE}: cannot create it ({err.strerror or err})") from None
    handle = os.fdopen(fd, "r+", encoding="ascii")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = "".join(c for c in handle.read(32) if c.isdigit()) or "unknown"
        handle.close()
        raise RulebertError(
            f"{folder}: --state-dir is in use by another rulebert serve (pid {holder}); one server per "
            "state dir"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def state_folder(path: Path, what: str) -> None:
    """Create ``path`` (owner only: stored rules are moderators' data, and it holds models it serves) or
    check it is a folder: a one-line error either way, never a traceback at start-up."""
    if path.exists() and not path.is_dir():
        raise RulebertError(f"{path}: {what} exists and is not a directory")
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise RulebertError(f"{err.filename or path}: cannot create {what} ({err.strerror or err})") from None
    if path.stat().st_mode & stat.S_ISVTX:  # /tmp itself, say: shared by design, never chmod-ed here
        logger.warning("%s: %s is a shared (sticky) folder: give rulebert a folder of its own", path, what)
        return
    try:  # one made before (by hand, by an older rulebert) may be open to every user of the machine
        loose = tighten(path, 0o700)
    except OSError as err:
        logger.warning("%s: %s is open to other users and cannot be made private (%s)", path, what, err)
        return
    if loose is not None:
        logger.warning("%s: %s was mode %o (open to other users); now 700", path, what, loose)


class ServedModel:
    """The model being served. ``current`` is replaced in one assignment: a request reads it once."""

    def __init__(self, served: Served) -> None:
        self.current = served

    def switch(self, served: Served) -> None:
        self.current = served


class ServerState:
    """The state dir: stored rules and adapted models."""

    def __init__(self, state_dir: str | os.PathLike, rules_db: str | os.PathLike | None = None) -> None:
        self.dir = Path(state_dir)
        self.models_dir = self.dir / MODELS_DIR
        state_folder(self.dir, "--state-dir")
        state_folder(self.models_dir, "the state dir's models folder")
        self._lock = lock_state_dir(self.dir)  # before anything is read or recovered
        self.rules = RuleStore(rules_db if rules_db is not None else self.dir / RULES_DB)
        self.jobs = JobStore(self.dir / JOBS_DB)
        self._recover()

    def _recover(self) -> None:
        """After a crash: jobs that were running are failed, their staging folders removed."""
        for job_id in self.jobs.recover():
            logger.warning("adaptation job %s was interrupted; marked failed", job_id)
        for path in self.models_dir.glob(f"{STAGING_PREFIX}*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)

    def stored_rule(self, rule_id: str) -> StoredRule:
        """``GET /v1/rules/{id}``'s rule: a 404 without one, a 409 naming what is wrong with a row that
        cannot be read (that id only: the others still read)."""
        from fastapi import HTTPException

        try:
            rule = self.rules.get(rule_id)
        except UnreadableRule as err:
            raise HTTPException(409, f"{err}: PUT it again or DELETE it") from None
        if rule is None:
            raise HTTPException(404, f"no stored rule {rule_id!r}")
        return rule

    def adapted_models(self) -> list[Path]:
        """Adapted model dirs, oldest first (their names start with a UTC time); staging dirs excluded."""
        return sorted(p for p in self.models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def newest_adapted(self, model_dir: str | os.PathLike) -> Path | None:
        """The newest adapted model that descends from ``model_dir`` and verifies, if any."""
        root = lineage_root(verify_model_dir(model_dir))
        for path in reversed(self.adapted_models()):
            try:
                record = verify_model_dir(path)
            except RulebertError as err:
                logger.warning("skipping %s: %s", path.name, err)
                continue
            if lineage_root(record) == root:
                return path
        return None

    def new_model_dir(self, job_id: str) -> Path:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        return self.models_dir / f"{stamp}-{job_id}"

    def prune(self, serving: Path) -> None:
        """Remove all but the newest ``KEEP_MODELS`` adapted models, never the one being served."""
        for path in self.adapted_models()[:-KEEP_MODELS]:
            if path.resolve() != serving.resolve():
                shutil.rmtree(path, ignore_errors=True)


class Busy(RulebertError):
    """An adaptation job is already queued or running."""


@dataclass
class JobState:
    job: str
    rules: list[str]
    status: str = "queued"
    progress: float = 0.0
    message: str = "queued"
    model: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Jobs:
    """Adaptation jobs, one at a time, each in its own thread: adapt the served model on stored rules,
    load the result, switch to it."""

    def __init__(self, state: ServerState, served: ServedModel, load: Callable[[Path], Served]) -> None:
        self.state, self.served, self.load = state, served, load
        self._jobs: OrderedDict[str, JobState] = OrderedDict()
        self._lock = threading.Lock()
        self._active: JobState | None = None

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                return job.to_json()
        return self.state.jobs.get(job_id)  # one from before a restart, or forgotten in memory

    @property
    def active(self) -> str | None:
        return None if self._active is None else self._active.job

    def start(self, rules: list[StoredRule]) -> dict[str, Any]:
        """Queue a job adapting on ``rules``; :class:`Busy` if one is queued or running."""
        with self._lock:
            if self._active is not None:
                raise Busy(f"adaptation job {self._active.job} is {self._active.status}; one at a time")
            job = JobState(uuid.uuid4().hex[:12], [rule.id for rule in rules])
            snapshot = job.to_json()
            # saved first: a job that cannot be recorded (a full disk: 507) is not left "active" for ever
            self.state.jobs.save(snapshot)
            self._active = self._jobs[job.job] = job
            while len(self._jobs) > KEEP_JOBS:
                self._jobs.popitem(last=False)
        threading.Thread(target=self._run, args=(job, rules), name=f"adapt-{job.job}", daemon=True).start()
        return snapshot

    def _update(self, job: JobState, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(job, key, value)
            snapshot = job.to_json()
        try:
            self.state.jobs.save(snapshot)
        except Exception as err:  # noqa: BLE001 - a full disk must not kill the job: memory still has it
            logger.warning("cannot record job %s: %s", job.job, err)

    def _run(self, job: JobState, rules: list[StoredRule]) -> None:
        from rulebert.training.adapt import (
            adapt_model,  # torch and transformers: loaded when a job runs, not at start
        )

        self._update(job, status="running", message="starting")
        source = Path(self.served.current.scorer.model_dir)
        try:
            result = adapt_model(
                source,
                rules,
                self.state.new_model_dir(job.job),
                progress=False,
                on_progress=lambda fraction, message: self._update(job, progress=fraction, message=message),
            )
            self._update(job, progress=0.97, message="loading the adapted model")
            served = self.load(result.output_dir)  # loaded before the switch: scoring never waits for it
            self.served.switch(served)
            self.state.prune(result.output_dir)
            self._update(
                job, status="succeeded", progress=1.0, message="serving the adapted model", model=served.name
            )
        except Exception as err:  # noqa: BLE001 - a job's failure is its answer, never the server's
            reason = str(err) if isinstance(err, RulebertError) else f"{type(err).__name__}: {err}"
            self._update(job, status="failed", message=" ".join(reason.split())[:500])
        finally:
            self._update(job, finished=time.time())
            with self._lock:
                self._active = None


def with_stored(
    state: ServerState | None, rules: list[Rule], where: Callable[[int], tuple[Any, ...]]
) -> list[Rule]:
    """Rules given by id alone, filled in from the store; an unknown id is a 422 naming it."""
    errors, out = [], []
    for i, rule in enumerate(rules):
        stored = None
        if rule.text is None and state is not None and is_rule_id(rule.id):
            try:
                stored = state.rules.get(rule.id)
            except UnreadableRule as err:
                msg = f"{err}: PUT it again or DELETE it"
                errors.append({"type": "unreadable_rule", "loc": where(i), "msg": msg, "input": rule.id})
                continue
        if rule.text is None and stored is None:
            why = (
                f"no stored rule {rule.id!r}" if state is not None else "no stored rules (serve --state-dir)"
            )
            errors.append({"type": "not_found", "loc": where(i), "msg": why, "input": rule.id})
            continue
        if stored is not None:
            rule = rule.model_copy(
                update={
                    "text": stored.text,
                    "positive_examples": rule.positive_examples or list(stored.positive_examples),
                    "negative_examples": rule.negative_examples or list(stored.negative_examples),
                }
            )
        out.append(rule)
    if errors:
        raise InvalidBody(error_body(errors))
    return out
