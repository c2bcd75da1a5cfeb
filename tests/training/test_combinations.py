"""The one-worker cells of the combination matrix (see combinations.py), and the covering set itself."""

from __future__ import annotations

import itertools
import math

import pytest

from tests.training.combinations import CELLS, DIMENSIONS, all_pairs, cell_id, refusal, run_cell

ONE_WORKER = [c for c in CELLS if c["nproc"] == 1]


def test_the_cells_cover_every_pair_of_values():
    names = list(DIMENSIONS)
    for a, b in itertools.combinations(names, 2):
        seen = {(c[a], c[b]) for c in CELLS[:-1]}
        assert seen == set(itertools.product(DIMENSIONS[a], DIMENSIONS[b])), (a, b)
    # far fewer than the whole product, which CI could not afford
    assert len(CELLS) < math.prod(len(v) for v in DIMENSIONS.values()) / 20
    assert all(refusal(c) is None for c in CELLS[:-1]) and refusal(CELLS[-1])  # pairs covered by cells that train
    assert CELLS[:-1] == all_pairs(DIMENSIONS, allowed=lambda row: refusal(row) is None)  # a failure names the same cell


@pytest.mark.slow
@pytest.mark.parametrize("cell", ONE_WORKER, ids=[cell_id(c) for c in ONE_WORKER])
def test_every_cell_trains_checkpoints_and_resumes_or_is_refused_up_front(tmp_path, cell):
    run_cell(tmp_path, cell)
