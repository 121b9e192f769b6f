"""A search on an SQLite storage interrupted three ways (SIGINT in a trial, SIGKILL in a trial, SIGTERM in
the final fine-tuning) and started again with the same command each time: it completes the requested
trials, each slot once, and writes its report."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from reliability_helpers import finish, one_line, signal_on, start
from test_search_helpers import make_env, trials_of

optuna.logging.set_verbosity(optuna.logging.WARNING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_env(tmp_path_factory.mktemp("search_interrupt_env"))


def _trial_started(line: str) -> bool:
    return line.startswith("trial ") and ": proxy run (slot" in line


def test_search_survives_sigint_sigkill_and_sigterm(env: tuple[Path, Path], tmp_path: Path) -> None:
    npz, model = env
    out, db = tmp_path / "search", tmp_path / "study.db"
    storage = f"sqlite:///{db}"
    args = ("search", str(model), "--task", str(npz), "--trials", "3", "--out", str(out), "--storage", storage,
            "--knobs", "structured,quantize", "--proxy-epochs", "1", "--top", "1", "--device", "cortex-m4")

    # 1. Ctrl-C while a trial runs: one line, exit 130, the running trial's slot is queued again at once
    rc, so, err = signal_on(start(*args, pause_on=": proxy run (slot"), _trial_started, signal.SIGINT)
    assert rc == 130, (so, err)
    line = one_line(err)
    assert line.startswith("interrupted: SIGINT during search trial ") and "this one's slot is queued again" in line
    assert f"resume with the same command: edgeslim search {model}" in line
    after_int = trials_of(storage)
    assert not [t for t in after_int if t.state == TrialState.RUNNING]  # nothing left claimed
    assert [t.user_attrs["error"] for t in after_int if t.state == TrialState.FAIL] == ["interrupted; slot re-queued"]
    assert not (out / "search.json").exists()

    # 2. SIGKILL (no handler runs): the killed trial stays RUNNING until the next start recovers it
    rc, so, err = signal_on(start(*args, pause_on=": proxy run (slot"), _trial_started, signal.SIGKILL)
    assert rc == -signal.SIGKILL and "joined study" in so
    assert [t for t in trials_of(storage) if t.state == TrialState.RUNNING]  # left claimed by the dead worker

    # 3. SIGTERM in the final fine-tuning of the front
    rc, so, err = signal_on(start(*args, pause_on="full fine-tuning"), "full fine-tuning", signal.SIGTERM)
    assert rc == 143, (so, err)
    assert "the final fine-tuning of slot" in one_line(err) and "finished final runs are kept" in err

    # 4. the same command completes the study and writes the report
    res = finish(*args)
    assert "joined study" in res.stdout and "report:" in res.stdout
    trials = trials_of(storage)
    finished = [t for t in trials if t.state in FINISHED]
    assert sorted(t.user_attrs["slot"] for t in finished) == [0, 1, 2]  # 3 trials, no slot twice
    for t in trials:
        if t.state == TrialState.FAIL:  # only interrupted or killed trials failed, and each was re-run
            assert t.user_attrs.get("requeued") and any(r.user_attrs.get("retry_of") == t.number for r in trials)
    s = json.loads((out / "search.json").read_text())
    assert s["counts"]["COMPLETE"] + s["counts"]["PRUNED"] == 3 and s["counts"]["FAIL"] == 0
    assert s["counts"]["REQUEUED"] == 2  # the SIGINT one and the SIGKILL one
    assert "2 interrupted and run again" in res.stdout
    assert (out / "report.html").exists() and any(out.glob("best_*.yaml"))
