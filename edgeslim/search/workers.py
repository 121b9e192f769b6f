"""Shared studies: storage URLs, trial slots, and recovery of trials whose worker died.

A study is created once with exactly N *slots* (Optuna WAITING trials, some with sensitivity-seeded
parameters, the rest left to the sampler). Every worker, on any machine, claims a slot atomically
(WAITING -> RUNNING is refused by the storage when another worker got there first), so N trials run
in total with no duplicates, however many workers join. A killed worker leaves its trial RUNNING;
the next search on the same machine marks it failed and re-queues its slot with the same parameters,
whose run folder then resumes stage by stage.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from edgeslim.errors import EdgeslimError

SCHEMES = ("journal:///PATH", "sqlite:///PATH", "postgresql://USER@HOST:PORT/DB", "mysql://...")


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """`journal:///path/file.log` (one machine, NFS with care), or any SQLAlchemy URL Optuna supports."""
    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = url[len("journal://"):]
        if not path:
            raise EdgeslimError(f"--storage {url}: journal URLs name a file, e.g. journal:///tmp/study.log")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    if url.split(":", 1)[0].split("+")[0] in ("sqlite", "postgresql", "postgres", "mysql", "oracle", "mssql"):
        engine_url = url
        if url.startswith(("postgresql://", "postgres://")):
            engine_url = _pg_driver(url)
        for attempt in range(10):
            try:
                return optuna.storages.RDBStorage(engine_url, engine_kwargs={"pool_pre_ping": True})
            except Exception as e:  # SQLAlchemy raises many types for bad URLs or unreachable servers
                # two workers creating the schema at once: one loses with a unique violation; retry
                if type(e).__name__ in ("IntegrityError", "ProgrammingError") and attempt < 9:
                    time.sleep(0.5 + 0.5 * attempt)
                    continue
                raise EdgeslimError(f"--storage {url}: cannot open ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200]})") from None
    raise EdgeslimError(f"--storage {url}: unknown URL scheme; valid: {', '.join(SCHEMES)}")


def _pg_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; use psycopg2 (the `search-pg` extra) when that is
    what is installed."""
    import importlib.util

    rest = url.split("://", 1)[1]
    if importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + rest
    if importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + rest
    raise EdgeslimError(f"--storage {url}: PostgreSQL needs a driver; pip install 'edgeslim[search-pg]'")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_study(storage: optuna.storages.BaseStorage, name: str, directions: list[Any], config: dict,
               seeds: list[dict], n_trials: int, wait_s: float = 120.0) -> tuple[optuna.Study, bool]:
    """Create the study with its N slots, or join it. Returns (study, created)."""
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=directions)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        deadline = time.time() + wait_s
        while not study.user_attrs.get("ready"):  # the creator is still enqueueing slots
            if time.time() > deadline:
                raise EdgeslimError(f"study '{name}' exists but was never set up (its creator died?); "
                                    "delete it or pick another --study-name") from None
            time.sleep(0.2)
        old = study.user_attrs.get("config", {})
        diff = [k for k in config if k != "trials" and old.get(k) != config[k]]
        if diff:
            raise EdgeslimError(f"study '{name}' in this storage was started with different settings "
                                f"({', '.join(diff)} differ); use the same ones or another --study-name") from None
        add_slots(study, n_trials)
        return study, False
    for i in range(n_trials):
        study.enqueue_trial(seeds[i] if i < len(seeds) else {},
                            user_attrs={"slot": i, "seeded": i < len(seeds)})
    study.set_user_attr("config", config)
    study.set_user_attr("slots", n_trials)
    study.set_user_attr("ready", True)
    return study, True


def add_slots(study: optuna.Study, n_trials: int) -> None:
    """A resumed search asked for more trials than the study has slots: add the difference."""
    have = int(study.user_attrs.get("slots", 0))
    if n_trials > have:
        for i in range(have, n_trials):
            study.enqueue_trial({}, user_attrs={"slot": i, "seeded": False})
        study.set_user_attr("slots", n_trials)


def claim_trial(study: optuna.Study) -> optuna.Trial | None:
    """Atomically take one WAITING slot (as Optuna's own queue does), or None when all are taken."""
    storage = study._storage  # the study's storage: Optuna keeps no public accessor
    for ft in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(ft._trial_id, state=TrialState.RUNNING):
                trial = optuna.Trial(study, ft._trial_id)
                trial.set_user_attr("worker", worker_id())
                return trial
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def recover_stale(study: optuna.Study) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker process on this machine is gone."""
    host = socket.gethostname()
    redone = []
    for ft in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w: Any = ft.user_attrs.get("worker", "")
        h, _, pid = str(w).rpartition(":")
        if h != host or not pid.isdigit() or _alive(int(pid)) or int(pid) == os.getpid():
            continue
        requeue(study, ft, f"worker {w} died; slot re-queued")
        redone.append(ft.number)
    return redone


def requeue(study: optuna.Study, ft: optuna.trial.FrozenTrial, why: str) -> None:
    """Fail a RUNNING trial and queue its slot again with the same parameters (its run folder resumes)."""
    storage = study._storage
    storage.set_trial_user_attr(ft._trial_id, "error", why)
    storage.set_trial_user_attr(ft._trial_id, "requeued", True)
    storage.set_trial_state_values(ft._trial_id, TrialState.FAIL)
    study.enqueue_trial(dict(ft.params), user_attrs={
        "slot": ft.user_attrs.get("slot", -1), "seeded": ft.user_attrs.get("seeded", False),
        "retry_of": ft.number})


def pending(study: optuna.Study) -> tuple[int, int]:
    """(waiting, running) trial counts."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return states.count(TrialState.WAITING), states.count(TrialState.RUNNING)
