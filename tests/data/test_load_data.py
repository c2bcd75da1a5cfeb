"""How load_data picks a reader, and its errors for names and paths that hold no data."""

import os
import socket
from pathlib import Path

import numpy as np
import pytest

from dlscale.data import DATA_NAMES, DataSpec, Splits, load_data
from dlscale.errors import UserError

WANT = DataSpec("image", (1, 8, 8), 10)


def test_built_in_names():
    assert DATA_NAMES == ("digits", "synthetic")
    for name in DATA_NAMES:
        assert isinstance(load_data(name, WANT, synthetic_samples=8), Splits)


def test_data_spec_is_frozen():
    with pytest.raises(AttributeError):
        WANT.kind = "tokens"


def test_readers_are_picked_by_what_is_at_the_path(tmp_path):
    np.savez(tmp_path / "table.npz", x=np.zeros((10, 4)), y=np.arange(10) % 2)
    (tmp_path / "story").write_text("once upon a time " * 100)  # no suffix: text because it decodes
    assert load_data(str(tmp_path / "table.npz"), WANT).input_shape == (4,)
    story = load_data(str(tmp_path / "story"), WANT)
    assert story.kind == "tokens" and story.name == str(tmp_path / "story")


def test_home_directory_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "story.txt").write_text("once upon a time " * 100)
    splits = load_data("~/story.txt", WANT)
    assert splits.kind == "tokens" and splits.name == "~/story.txt"


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"data path .*nope/mnist does not exist; give digits, synthetic.*a path to"):
        load_data(str(tmp_path / "nope" / "mnist"), WANT)


def test_missing_file_with_a_suffix_is_reported_as_a_path():
    with pytest.raises(UserError, match="data path missing.npz does not exist"):
        load_data("missing.npz", WANT)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "imagenet"])
def test_unknown_name_is_a_user_error_listing_names_and_formats(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so that no file of that name can exist
    with pytest.raises(UserError) as caught:
        load_data(name, WANT)
    message = str(caught.value)
    assert message.startswith(f"unknown data {name!r}")
    for fragment in ("digits", "synthetic:CxHxW", "MNIST IDX", "CIFAR-10", "image", ".npz", "text file"):
        assert fragment in message


def test_empty_directory_is_a_user_error_saying_what_was_looked_for(tmp_path):
    looked_for = "no usable data in directory .*train-images-idx3-ubyte.*data_batch_1.*class subfolders"
    with pytest.raises(UserError, match=looked_for):
        load_data(str(tmp_path), WANT)


def test_directory_of_loose_files_is_a_user_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="no usable data in directory"):
        load_data(str(tmp_path), WANT)


def test_unreadable_directory_is_a_user_error(tmp_path, monkeypatch):
    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refuse)  # as a folder without read permission behaves (tests may run as root)
    with pytest.raises(UserError, match=r"cannot read .* \(Permission denied\); check the path and its permissions"):
        load_data(str(tmp_path), WANT)


@pytest.mark.timeout(30)  # opening a FIFO to read blocks until someone writes: it must never be opened
@pytest.mark.parametrize("name", ["data.npz", "story.txt", "data"])
def test_fifo_given_as_data_is_refused_by_name(tmp_path, name):
    os.mkfifo(tmp_path / name)
    with pytest.raises(UserError, match=rf"^data {tmp_path / name} is a FIFO \(named pipe\), not a regular file"):
        load_data(str(tmp_path / name), WANT)


@pytest.mark.parametrize("name", ["/dev/zero", "zeros.npz", "zeros.txt"])
def test_device_given_as_data_is_refused_by_name(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    if name != "/dev/zero":
        (tmp_path / name).symlink_to("/dev/zero")
    with pytest.raises(UserError, match=rf"^data {name}.* is a character device, not a regular file.*copy the data"):
        load_data(name, WANT)


def test_socket_given_as_data_is_refused_by_name(tmp_path):
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "data.npz"))
        with pytest.raises(UserError, match=r"data.npz is a socket, not a regular file"):
            load_data(str(tmp_path / "data.npz"), WANT)
