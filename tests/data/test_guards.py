"""The shared checks: available memory, regular files only, labels and finite values."""

import os
import socket

import numpy as np
import pytest
import torch

from dlscale import units
from dlscale.data import guards
from dlscale.errors import UserError


def test_available_memory_is_positive_and_says_where_it_comes_from():
    room = guards.available_memory()
    assert room.bytes > 0 and room.source


def test_require_memory_names_what_needs_how_much_and_how_to_fix():
    guards.require_memory(1, "one byte", "never said")
    expected = r"^the thing needs about 1024\.0 EiB of memory but only .* is available \(.+\); do less$"
    with pytest.raises(UserError, match=expected):
        guards.require_memory(2**70, "the thing", "do less")


def test_format_bytes():
    sizes = (0, 1023, 1536, 800 * 10**9)
    assert [units.format_bytes(n) for n in sizes] == ["0 bytes", "1023 bytes", "1.5 KiB", "745.1 GiB"]


def test_regular_files_and_links_to_them_pass(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"1")
    (tmp_path / "link.bin").symlink_to(tmp_path / "data.bin")
    guards.require_regular_file(tmp_path / "data.bin")
    guards.require_regular_file(tmp_path / "link.bin")
    guards.require_regular_file(tmp_path / "missing.bin")  # left to the reader's own open to report


def make_socket(path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    return server


@pytest.mark.parametrize(
    "make, kind",
    [
        (os.mkfifo, "a FIFO (named pipe)"),
        (make_socket, "a socket"),
        (lambda path: path.symlink_to("/dev/zero"), "a character device"),
        (lambda path: path.mkdir(), "a directory"),
    ],
)
def test_other_kinds_of_file_are_refused_by_name_and_kind(tmp_path, make, kind):
    path = tmp_path / "data.npz"
    made = make(path)
    with pytest.raises(UserError, match=f"^{path}.* is {kind.replace('(', '.').replace(')', '.')}, not a regular file"):
        guards.require_regular_file(path)
    if made is not None:
        made.close()


def test_a_link_is_reported_with_its_target(tmp_path):
    (tmp_path / "zeros").symlink_to("/dev/zero")
    with pytest.raises(UserError, match=r"zeros \(a link to /dev/zero\) is a character device"):
        guards.require_regular_file(tmp_path / "zeros")


def test_names_a_file_sees_fifos_but_not_directories(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    assert guards.names_a_file(tmp_path / "pipe")
    assert not guards.names_a_file(tmp_path / "folder") and not guards.names_a_file(tmp_path / "missing")


@pytest.mark.parametrize(
    "labels, value, index",
    [
        (np.array([0, 1, 2**31, 3]), 2**31, 2),
        (np.array([0, -1, 1], np.int8), -1, 1),
        (np.array([5, 2**64 - 1], np.uint64), 2**64 - 1, 1),
        (np.array([guards.MAX_CLASSES]), guards.MAX_CLASSES, 0),
    ],
)
def test_labels_out_of_range_are_refused_naming_value_and_index(labels, value, index):
    with pytest.raises(UserError, match=f"^y in d.npz holds label {value} at index {index}; .*never negative"):
        guards.check_labels(labels, "y in d.npz")


def test_many_bad_labels_are_counted():
    with pytest.raises(UserError, match=r"holds label -1 at index 0 \(and 2 more out of range\);"):
        guards.check_labels(np.array([-1, 0, -2, 2**40]), "y")


def test_labels_in_range_pass():
    guards.check_labels(np.array([0, 3, guards.MAX_CLASSES - 1], np.uint32), "y")


def test_first_non_finite_sample_is_found_in_arrays_and_tensors():
    x = np.zeros((40, 3, 2), np.float32)
    assert guards.first_non_finite(x) is None
    x[17, 2, 1] = np.nan
    x[30, 0, 0] = np.inf
    assert guards.first_non_finite(x) == 17
    assert guards.first_non_finite(torch.from_numpy(x)) == 17
    assert guards.first_non_finite(torch.from_numpy(x).to(torch.bfloat16)) == 17


def test_first_non_finite_counts_float64_beyond_float32_as_inf():
    x = np.zeros((5, 4))
    x[3, 1] = -1e300  # finite in float64, -inf once the model's float32 sees it
    assert guards.first_non_finite(x) == 3


def test_first_non_finite_checks_in_chunks(monkeypatch):
    monkeypatch.setattr(guards, "CHUNK_ELEMENTS", 8)  # 2 samples a chunk: the index must be global
    x = np.ones((9, 4), np.float16)
    x[7, 3] = np.inf
    assert guards.first_non_finite(x) == 7


def test_integers_are_always_finite():
    assert guards.first_non_finite(np.full((3, 2), np.iinfo(np.int64).max)) is None
    assert guards.first_non_finite(torch.ones(3, 2, dtype=torch.int64)) is None
