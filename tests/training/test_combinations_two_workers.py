"""The two-worker cells of the combination matrix (see combinations.py), the refused one among them."""

from __future__ import annotations

import pytest

from tests.training.combinations import CELLS, cell_id, run_cell

TWO_WORKERS = [c for c in CELLS if c["nproc"] == 2]


@pytest.mark.slow
@pytest.mark.parametrize("cell", TWO_WORKERS, ids=[cell_id(c) for c in TWO_WORKERS])
def test_every_cell_trains_checkpoints_and_resumes_or_is_refused_up_front(tmp_path, cell):
    run_cell(tmp_path, cell)
