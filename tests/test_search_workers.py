"""Shared studies: two worker processes on one journal file, resume after a kill, and a real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_search_helpers import FAST, cli, make_env, popen, trials_of

optuna.logging.set_verbosity(optuna.logging.WARNING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_env(tmp_path_factory.mktemp("search_workers_env"))


def _two_workers(env: tuple[Path, Path], root: Path, storage: str, n: int) -> list[str]:
    npz, model = env
    procs = [popen("search", str(model), "--task", str(npz), "--trials", str(n), "--storage", storage,
                   "--worker", "--out", str(root / f"w{i}"), *FAST) for i in range(2)]
    outs = []
    for p in procs:
        so, se = p.communicate(timeout=400)
        assert p.returncode == 0, se
        outs.append(so)
    return outs


def _check_exactly_n(trials: list, n: int) -> None:
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(n))  # n trials, numbers unique: no duplicate, none extra
    assert all(t.state in FINISHED for t in trials), [t.state for t in trials]
    assert sorted(t.user_attrs["slot"] for t in trials) == list(range(n))  # every slot ran once


def test_two_workers_share_one_journal_without_duplicates(env: tuple[Path, Path], tmp_path: Path) -> None:
    storage = f"journal://{tmp_path / 'study.log'}"
    outs = _two_workers(env, tmp_path, storage, 4)
    trials = trials_of(storage)
    _check_exactly_n(trials, 4)
    ran = [int(o.split("ran ")[1].split()[0]) for o in outs]
    assert sum(ran) == 4  # the workers split the trial count between them
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) >= 1 and all(":" in w for w in workers)


def test_killed_search_resumes_from_its_storage(env: tuple[Path, Path], tmp_path: Path) -> None:
    npz, model = env
    out = tmp_path / "s"
    args = ("search", str(model), "--task", str(npz), "--trials", "3", "--out", str(out), *FAST)
    p = popen(*args)
    storage = f"journal://{out / 'study.journal'}"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it as soon as one trial has finished
        try:
            if any(t.state in FINISHED for t in trials_of(storage)):
                break
        except KeyError:  # the journal exists before the study does
            pass
        time.sleep(0.3)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = trials_of(storage)
    assert any(t.state in FINISHED for t in before) and not (out / "search.json").exists()
    cli(*args)  # the same command again continues the study
    after = trials_of(storage)
    finished = [t for t in after if t.state in FINISHED]
    assert sorted(t.user_attrs["slot"] for t in finished) == [0, 1, 2]
    for t in before:  # trials finished before the kill were kept, not re-run
        if t.state in FINISHED:
            assert after[t.number].state == t.state and after[t.number].values == t.values
    for t in after:
        if t.state == TrialState.FAIL:  # the trial the kill interrupted: failed and its slot re-queued
            assert "died" in t.user_attrs["error"]
            assert any(r.user_attrs.get("retry_of") == t.number for r in finished)
    s = json.loads((out / "search.json").read_text())
    assert s["counts"]["COMPLETE"] + s["counts"]["PRUNED"] == 3 and (out / "report.html").exists()


def _pg_ready() -> bool:
    from edgeslim.search import pgcluster

    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return False
    return pgcluster.cluster_available()


@pytest.mark.skipif(not _pg_ready(), reason="PostgreSQL server binaries or psycopg2 not installed")
def test_two_workers_on_a_real_postgresql_server(env: tuple[Path, Path], tmp_path: Path) -> None:
    from edgeslim.search.pgcluster import cluster

    with cluster() as url:
        assert url.startswith("postgresql://")
        _two_workers(env, tmp_path, url, 4)
        _check_exactly_n(trials_of(url), 4)
