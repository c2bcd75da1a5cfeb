import json
import os
import pickle

import numpy as np
import pytest
import torch
from dlscale.data import DataSpec, load_data
from dlscale.data.text import TokenWindows, load_text
from dlscale.data.token_bin import load_nanogpt_dir, load_token_bin, pack_text
from dlscale.errors import UserError
from dlscale.inference.inputs import TOKEN_IDS_ONLY, token_inputs

TOKENS = DataSpec("tokens", (32,), 256)


def write_text(path, n_bytes):
    text = ("the quick brown fox jumps over the lazy dog. " * (n_bytes // 45 + 1))[:n_bytes]
    path.write_text(text)
    return path.read_bytes()


def write_ids(path, ids, dtype=np.uint16):
    np.asarray(ids, dtype=dtype).tofile(path)
    return path


# --------------------------------------------------------------------------- pack


def test_packed_text_is_its_bytes_with_a_sidecar_saying_uint8(tmp_path):
    raw = write_text(tmp_path / "book.txt", 10_000)
    result = pack_text(tmp_path / "book.txt", tmp_path / "book.bin")
    assert (tmp_path / "book.bin").read_bytes() == raw
    meta = json.loads((tmp_path / "book.bin.json").read_text())
    assert meta == {"kind": "tokens", "schema_version": 1, "dtype": "uint8", "vocab_size": 256,
                    "tokens": 10_000, "tokenizer": "bytes", "source": "book.txt"}
    assert result["tokens"] == result["bytes"] == 10_000 and result["dtype"] == "uint8"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_packing_again_replaces_an_earlier_pack(tmp_path):
    write_text(tmp_path / "book.txt", 1_000)
    pack_text(tmp_path / "book.txt", tmp_path / "book.bin")
    raw = write_text(tmp_path / "book.txt", 2_000)
    assert pack_text(tmp_path / "book.txt", tmp_path / "book.bin")["tokens"] == 2_000
    assert (tmp_path / "book.bin").read_bytes() == raw


def test_windows_of_the_pack_are_the_windows_of_the_text(tmp_path):
    write_text(tmp_path / "book.txt", 10_000)
    pack_text(tmp_path / "book.txt", tmp_path / "book.bin")
    packed = load_token_bin(tmp_path / "book.bin", "book.bin", 32)
    text = load_text(tmp_path / "book.txt", "book.txt", 32)
    assert (packed.num_classes, packed.preprocess) == (256, {"kind": "bytes", "vocab_size": 256})
    for split in ("train", "val", "test"):
        a, b = getattr(packed, split), getattr(text, split)
        assert isinstance(a, TokenWindows) and len(a) == len(b)
        for i in (0, 1, len(b) - 1):
            assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])


@pytest.mark.parametrize(
    "src, out, message",
    [
        ("missing.txt", "out.bin", "source .*missing.txt does not exist"),
        ("noise.dat", "out.bin", "not a text file"),
        ("book.txt", "out.txt", "does not end in .bin"),
        ("book.txt", "no/such/out.bin", "folder of output .* does not exist"),
    ],
)
def test_bad_pack_requests_are_user_errors(tmp_path, src, out, message):
    write_text(tmp_path / "book.txt", 100)
    (tmp_path / "noise.dat").write_bytes(bytes([0xFF, 0xFE, 0x00, 0x80]) * 100)
    with pytest.raises(UserError, match=message):
        pack_text(tmp_path / src, tmp_path / out)


@pytest.mark.parametrize("existing", ["out.bin", "out.bin.json"])
def test_packing_over_a_file_that_is_no_pack_output_is_refused_and_it_is_unchanged(tmp_path, existing):
    write_text(tmp_path / "book.txt", 100)
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(UserError, match="exists and is not the output of dlscale data pack"):
        pack_text(tmp_path / "book.txt", tmp_path / "out.bin")
    assert (tmp_path / existing).read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["book.txt", existing])


# --------------------------------------------------------------------------- read a .bin


def test_a_uint16_bin_without_sidecar_reads_as_gpt2_ids(tmp_path):
    ids = np.arange(1000, dtype=np.uint16) * 50
    write_ids(tmp_path / "train.tokens.bin", ids)
    splits = load_data(str(tmp_path / "train.tokens.bin"), TOKENS)
    assert (splits.kind, splits.num_classes, splits.input_shape) == ("tokens", 50257, (32,))
    assert splits.preprocess == {"kind": "token_ids", "vocab_size": 50257}
    x, y = splits.train[2]
    assert x.dtype == torch.int64 and x.tolist() == ids[66:98].tolist() and y.tolist() == ids[67:99].tolist()
    xb, _ = splits.train.gather(torch.tensor([0, 2]))
    assert xb[1].tolist() == x.tolist()
    assert splits.val[0][0].tolist() == ids[900:932].tolist()


def test_a_token_id_beyond_the_vocabulary_is_refused_naming_the_file(tmp_path):
    ids = np.zeros(2000, dtype=np.uint16)
    ids[1234] = 60000
    write_ids(tmp_path / "corpus.bin", ids)
    with pytest.raises(UserError, match=r"corpus.bin holds token id 60000 at position 1234.*50257"):
        load_data(str(tmp_path / "corpus.bin"), TOKENS)


def test_a_sidecar_sets_dtype_and_vocabulary_and_its_range_is_checked(tmp_path):
    write_ids(tmp_path / "c.bin", [1, 2, 3, 99] * 100, np.uint32)
    (tmp_path / "c.bin.json").write_text(json.dumps({"kind": "tokens", "schema_version": 1, "dtype": "uint32", "vocab_size": 100}))
    splits = load_data(str(tmp_path / "c.bin"), TOKENS)
    assert splits.num_classes == 100 and splits.train[0][0].tolist()[:4] == [1, 2, 3, 99]
    (tmp_path / "c.bin.json").write_text(json.dumps({"kind": "tokens", "schema_version": 1, "dtype": "uint32", "vocab_size": 99}))
    with pytest.raises(UserError, match="c.bin holds token id 99"):
        load_data(str(tmp_path / "c.bin"), TOKENS)


def test_an_odd_sized_bin_without_sidecar_is_refused(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00" * 500 + b"\x01")
    with pytest.raises(UserError, match="odd.bin has an odd number of bytes .1001."):
        load_data(str(tmp_path / "odd.bin"), TOKENS)


def test_a_sidecar_whose_count_disagrees_with_the_file_is_refused(tmp_path):
    write_text(tmp_path / "book.txt", 1_000)
    pack_text(tmp_path / "book.txt", tmp_path / "book.bin")
    with open(tmp_path / "book.bin", "ab") as f:
        f.write(b"more")
    with pytest.raises(UserError, match="holds 1004 tokens but .* says 1000"):
        load_data(str(tmp_path / "book.bin"), TOKENS)


# --------------------------------------------------------------------------- nanoGPT folders


def test_a_nanogpt_folder_trains_on_train_bin_and_halves_val_bin(tmp_path):
    train = np.arange(3000) % 65
    val = (np.arange(200) * 7) % 65
    write_ids(tmp_path / "train.bin", train)
    write_ids(tmp_path / "val.bin", val)
    (tmp_path / "meta.json").write_text(json.dumps({"vocab_size": 65}))
    splits = load_data(str(tmp_path), TOKENS)
    assert splits.num_classes == 65 and splits.preprocess == {"kind": "token_ids", "vocab_size": 65}
    assert len(splits.train) == 3000 // 33 and splits.train[1][0].tolist() == train[33:65].tolist()
    assert len(splits.val) == len(splits.test) == 100 // 33
    assert splits.val[0][0].tolist() == val[:32].tolist() and splits.test[0][0].tolist() == val[100:132].tolist()


def test_a_short_val_bin_is_all_validation(tmp_path):
    write_ids(tmp_path / "train.bin", np.arange(1000))
    write_ids(tmp_path / "val.bin", np.arange(50))
    splits = load_nanogpt_dir(tmp_path, "d", 32)
    assert splits.num_classes == 50257 and len(splits.val) == 1 and splits.test is None


def test_meta_pkl_is_never_unpickled(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    write_ids(tmp_path / "train.bin", np.arange(1000) % 65)
    write_ids(tmp_path / "val.bin", np.arange(100) % 65)
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps(Payload()))
    splits = load_data(str(tmp_path), TOKENS)
    assert not (tmp_path / "PWNED").exists()
    assert splits.num_classes == 50257  # meta.pkl ignored: nanoGPT's default vocabulary


def test_a_folder_with_train_bin_but_no_val_bin_says_what_to_do(tmp_path):
    write_ids(tmp_path / "train.bin", np.arange(1000))
    with pytest.raises(UserError, match="no val.bin.*train.bin"):
        load_data(str(tmp_path), TOKENS)


# --------------------------------------------------------------------------- inference inputs


def test_a_token_ids_model_refuses_text_and_takes_ids_in_its_vocabulary():
    recipe = {"kind": "token_ids", "vocab_size": 100}
    with pytest.raises(UserError, match=TOKEN_IDS_ONLY):
        token_inputs("hello", recipe)
    assert token_inputs([1, 2, 99], recipe).tolist() == [[1, 2, 99]]
    with pytest.raises(UserError, match="from 0 to 99"):
        token_inputs([1, 100], recipe)
    assert token_inputs("ab", {"kind": "bytes", "vocab_size": 256}).tolist() == [[97, 98]]
