"""One launcher for train and every bench: every way the workers fail becomes one exception
(the agent itself is replaced here; the real runs are in test_distributed and test_signals)."""

import os
from pathlib import Path

import pytest

from dlscale.distributed import elastic
from dlscale.distributed.elastic import LaunchPlan, LauncherSignalled, launch
from dlscale.errors import Stopped, UserError


def agent(monkeypatch, outcome, lines=()):
    """Replace the elastic agent: it writes ``lines`` to rank 1's stderr.log and then
    returns (or raises) ``outcome``; it records the environment the workers would inherit."""
    seen = {}

    def run_workers(worker_args, plan, log_dir):
        seen["env"] = dict(os.environ)
        if lines:
            log = Path(log_dir) / "run" / "attempt_0" / "1" / "stderr.log"
            log.parent.mkdir(parents=True)
            log.write_text("".join(line + "\n" for line in lines))
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(elastic, "run_workers", run_workers)
    return seen


def test_success_sets_the_workers_environment_and_restores_this_one(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSCALE_TEST_KEPT", "before")
    monkeypatch.delenv("DLSCALE_TEST_NEW", raising=False)
    seen = agent(monkeypatch, {})
    launch(["train"], LaunchPlan(nproc=2), tmp_path, env={"DLSCALE_TEST_KEPT": "for workers", "DLSCALE_TEST_NEW": "x"})
    assert seen["env"]["DLSCALE_TEST_KEPT"] == "for workers" and seen["env"]["DLSCALE_TEST_NEW"] == "x"
    assert os.environ["DLSCALE_TEST_KEPT"] == "before" and "DLSCALE_TEST_NEW" not in os.environ


def test_a_failed_worker_is_one_line_with_its_error(tmp_path, monkeypatch):
    agent(monkeypatch, {3: 2, 1: 2}, ["some output", "error: rank 1: it broke"])
    with pytest.raises(UserError) as raised:
        launch(["bench", "scaling"], LaunchPlan(nproc=4), tmp_path, env={"DLSCALE_TEST_NEW": "x"})
    assert str(raised.value) == "worker rank 1 failed (exit code 2): rank 1: it broke"
    assert "DLSCALE_TEST_NEW" not in os.environ


def test_a_failed_worker_without_an_error_line_points_at_the_logs(tmp_path, monkeypatch):
    agent(monkeypatch, {0: 1})
    with pytest.raises(UserError, match=f"worker rank 0 failed \\(exit code 1\\): see its log under {tmp_path}"):
        launch(["train"], LaunchPlan(nproc=2), tmp_path)


def test_a_worker_stopped_by_a_signal_is_stopped_not_an_error(tmp_path, monkeypatch):
    agent(monkeypatch, {0: 143, 1: 143}, ["dlscale: stopped by SIGTERM after step 7 of 100: checkpoint saved"])
    with pytest.raises(Stopped) as raised:
        launch(["train"], LaunchPlan(nproc=2), tmp_path)
    assert str(raised.value) == "stopped by SIGTERM after step 7 of 100: checkpoint saved"
    assert raised.value.exit_code == 143


def test_a_stop_exits_with_the_signal_the_workers_named_not_the_agents_kill(tmp_path, monkeypatch):
    """Rank 1 left first (138 after SIGUSR1), so the agent killed rank 0 on its way out (-15): the
    failed rank with the lowest number does not say which signal stopped the run."""
    agent(monkeypatch, {0: -15, 1: 138}, ["dlscale: stopped by SIGUSR1 after step 4 of 5: checkpoint saved"])
    with pytest.raises(Stopped) as raised:
        launch(["train"], LaunchPlan(nproc=2), tmp_path)
    assert raised.value.exit_code == 138


def test_a_signalled_launcher_is_stopped_with_the_workers_words_or_its_own(tmp_path, monkeypatch):
    agent(monkeypatch, LauncherSignalled(10), ["dlscale: stopped by SIGUSR1 after step 3 of 9: checkpoint saved"])
    with pytest.raises(Stopped) as raised:
        launch(["train"], LaunchPlan(nproc=2), tmp_path / "a")
    assert str(raised.value).startswith("stopped by SIGUSR1 after step 3") and raised.value.exit_code == 138
    agent(monkeypatch, LauncherSignalled(15))
    with pytest.raises(Stopped) as raised:
        launch(["train"], LaunchPlan(nproc=2), tmp_path / "b")
    assert str(raised.value) == "stopped by SIGTERM before the workers saved a checkpoint" and raised.value.exit_code == 143
