"""The two-worker cells of the combination matrix (see combinations.py), the refused one among them."""

from __future__ import annotations

import pytest

from tests.training.combinations import CELLS, cell_id, run_cell

TWO_WORKERS = [c for c in CELLS if c["nproc"] == 2]


@pytest.mark.slow
@pytest.mark.parametrize("cell", TWO_WORKERS, ids=[cell_id(c) for c in TWO_WORKERS])
def test_every_cell_trains_checkpoints_and_resumes_or_is_refused_up_front(tmp_path, cell):
    run_cell(tmp_path, cell)


@pytest.mark.slow
def test_the_reported_fsdp_conv_net_command_trains_at_defaults(tmp_path):
    """Issue 18's report: the settings probe picked channels_last for the cnn and FSDP2 refused
    its non-contiguous weights inside the worker. Under FSDP auto now keeps NCHW."""
    from tests.conftest import last_json, run_cli

    done = run_cli(["train", "--model", "cnn", "--data", "digits", "--nproc", "2", "--strategy", "fsdp",
                    "--precision", "fp32", "--max-steps", "6", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = last_json(done.stdout)
    assert summary["world_size"] == 2 and summary["steps"] == 6
    assert summary["channels_last"] is False
