"""--init-from: a new run starts from a trained run's weights, and the trained run stays as it was."""

from __future__ import annotations

import hashlib
import json

import pytest

import dlscale
from dlscale.errors import UserError


def _hashes(run_dir):
    return {p.relative_to(run_dir): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _first_loss(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in lines if r["kind"] == "train")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("init-from")
    return dlscale.fit("mlp", "digits", max_steps=80, run_dir=str(root / "source"), verbose=False, log_every=1)


def test_a_run_started_from_a_trained_run_begins_where_it_ended_and_leaves_it_unchanged(trained, tmp_path):
    before = _hashes(trained.run_dir)
    fresh = dlscale.fit("mlp", "digits", max_steps=4, run_dir=str(tmp_path / "fresh"), verbose=False, log_every=1)
    tuned = dlscale.fit("mlp", "digits", max_steps=4, lr=1e-4, run_dir=str(tmp_path / "tuned"), verbose=False,
                        log_every=1, init_from=str(trained.run_dir))
    assert _first_loss(tuned.run_dir) < 0.5 * _first_loss(fresh.run_dir)
    assert tuned.summary["test_accuracy"] >= trained.summary["test_accuracy"] - 0.03
    assert _hashes(trained.run_dir) == before


def test_a_checkpoint_folder_can_start_a_run_too(trained, tmp_path):
    step = sorted((trained.run_dir / "checkpoints").glob("step-*"))[-1]
    tuned = dlscale.fit("mlp", "digits", max_steps=2, lr=1e-5, run_dir=str(tmp_path / "c"), verbose=False,
                        log_every=1, init_from=str(step))
    assert _first_loss(tuned.run_dir) < 1.0


def test_weights_for_other_data_or_no_run_are_refused_in_one_line(trained, tmp_path):
    with pytest.raises(UserError, match="same shape"):
        dlscale.fit("mlp", "synthetic:3x8x8", max_steps=2, run_dir=str(tmp_path / "x"), verbose=False, init_from=str(trained.run_dir))
    with pytest.raises(UserError, match="not a run directory"):
        dlscale.fit("mlp", "digits", max_steps=2, run_dir=str(tmp_path / "y"), verbose=False, init_from=str(tmp_path))
