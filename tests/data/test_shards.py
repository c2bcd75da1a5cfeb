"""Image shards (``dlscale data pack FOLDER OUT``): the same samples as the folder, tars that
other tools read, broken images found when read, and a strict index."""

import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from dlscale.data import DataSpec, load_data
from dlscale.data.batches import BatchOrder, train_batches
from dlscale.data.loader import Feed
from dlscale.data.shards import ShardImages, is_shard_dir, load_shards, pack_image_folder, read_index
from dlscale.errors import UserError

WANT = DataSpec("image", (3, 32, 32), 3)


def make_folder(root, per_class=7):
    """root/<class>/<i>.jpg|png: noise photos, grey and colour, JPEG and PNG, a few sizes."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("ant", "bee", "cow")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = (48, 40) if i % 3 else (61 + 5 * i, 37 + c)
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            if i % 4 == 1:
                image = image.convert("L")
            image.save(root / name / (f"{i}.png" if i % 2 else f"{i}.JPG"))
    return root


def _equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("augment", ["standard", "none"])
def test_shards_give_exactly_the_samples_of_the_folder(tmp_path, augment):
    folder = make_folder(tmp_path / "photos")
    result = pack_image_folder(folder, tmp_path / "shards", shard_bytes=20_000)
    assert result["samples"] == 21 and result["shards"] > 3 and result["splits"] == {"train": 17, "val": 2, "test": 2}
    assert is_shard_dir(tmp_path / "shards") and not is_shard_dir(folder)

    options = {"augment": augment, "image_size": 32 if augment == "standard" else None, "seed": 3}
    plain = load_data(str(folder), WANT, **options)
    packed = load_data(str(tmp_path / "shards"), WANT, **options)
    assert isinstance(packed.train, ShardImages)
    assert (packed.input_shape, packed.num_classes, packed.class_names, packed.preprocess) == (
        plain.input_shape, plain.num_classes, plain.class_names, plain.preprocess)
    assert plain.input_shape[0] == 3  # a colour image among grey ones: all RGB
    assert len(packed.train) == len(plain.train)
    for i in range(len(plain.train)):
        for epoch in (0, 1):  # the random crop seeded by (seed, epoch, index) in both
            assert _equal(packed.train[(i, epoch)], plain.train[(i, epoch)])
    for split in ("val", "test"):
        a, b = getattr(plain, split), getattr(packed, split)
        assert len(a) == len(b) and all(_equal(a[i], b[i]) for i in range(len(a)))
    assert packed.train.files[0] == "train-00000.tar:000000.jpg"  # the extension lower-cased
    head = packed.train.head(3)
    assert isinstance(head, ShardImages) and len(head) == 3 and _equal(head[(2, 1)], packed.train[(2, 1)])


def test_the_tars_are_webdataset_style_with_offsets_from_the_index(tmp_path):
    folder = make_folder(tmp_path / "photos")
    pack_image_folder(folder, tmp_path / "shards", shard_bytes=30_000)
    index = read_index(tmp_path / "shards")
    assert index["class_names"] == ["ant", "bee", "cow"]
    seen = 0
    for shard in index["splits"]["train"]:
        with tarfile.open(tmp_path / "shards" / shard["file"]) as tar:
            members = tar.getmembers()
            assert [m.name for m in members] == [
                name for key, ext in zip(shard["keys"], shard["exts"]) for name in (f"{key}.{ext}", f"{key}.cls")]
            for image, cls, offset, size, label, path in zip(
                    members[::2], members[1::2], shard["offsets"], shard["sizes"], shard["labels"], shard["paths"]):
                assert (image.offset_data, image.size) == (offset, size)
                assert tar.extractfile(image).read() == (folder / path).read_bytes()  # bytes unchanged
                assert tar.extractfile(cls).read() == str(label).encode()
                assert path.split("/")[0] == index["class_names"][label]
                seen += 1
    assert seen == 17


def test_split_folders_are_kept_and_a_broken_image_is_named_by_shard_and_key_or_skipped(tmp_path):
    make_folder(tmp_path / "photos" / "train", per_class=4)
    make_folder(tmp_path / "photos" / "val", per_class=1)
    broken = tmp_path / "photos" / "train" / "bee" / "2.JPG"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated: the header reads, the data does not
    result = pack_image_folder(tmp_path / "photos", tmp_path / "shards", shard_bytes=15_000)
    assert result["splits"] == {"train": 12, "val": 3, "test": 0}

    index = read_index(tmp_path / "shards")
    where = [(shard["file"], key, ext) for shard in index["splits"]["train"]
             for key, ext, path in zip(shard["keys"], shard["exts"], shard["paths"]) if path == "train/bee/2.JPG"]
    (shard, key, ext), = where
    splits = load_data(str(tmp_path / "shards"), WANT, augment="standard", image_size=32)
    assert splits.test is None and len(splits.val) == 3
    bad = splits.train.files.index(f"{shard}:{key}.{ext}")
    with pytest.raises(UserError, match=f"cannot read image {shard}:{key}.jpg .*--skip-bad-files"):
        splits.train[bad]
    x, y, reported = splits.train[(bad, 0)]  # the loader's key: reported, not raised
    assert (int(y), int(reported)) == (-1, bad)

    skipping = load_shards(tmp_path / "shards", "shards", augment="standard", image_size=32, skip_bad_files=True)
    x, y, reported = skipping.train[(bad, 0)]
    assert int(reported) == bad and int(y) == skipping.train.labels[bad + 1]
    assert torch.equal(x, skipping.train[(bad + 1, 0)][0])


def _tamper(tmp_path, change):
    folder = make_folder(tmp_path / "photos", per_class=3)
    pack_image_folder(folder, tmp_path / "shards", shard_bytes=20_000)
    path = tmp_path / "shards" / "index.json"
    index = json.loads(path.read_text())
    change(index, tmp_path / "shards")
    path.write_text(json.dumps(index))
    return tmp_path / "shards"


def _first(index):
    return index["splits"]["train"][0]


TAMPERINGS = {
    "offset beyond the file": (lambda ix, d: _first(ix)["offsets"].__setitem__(0, _first(ix)["bytes"]), "outside"),
    "a shard outside the folder": (lambda ix, d: _first(ix).__setitem__("file", "../photos.tar"), "plain .tar file name"),
    "a label as text": (lambda ix, d: _first(ix)["labels"].__setitem__(0, "1"), "labels is not a list of numbers"),
    "a label out of range": (lambda ix, d: _first(ix)["labels"].__setitem__(0, 3), "not one of the 3 classes"),
    "a float size": (lambda ix, d: _first(ix)["sizes"].__setitem__(0, 1.5), "sizes is not a list of numbers"),
    "a column cut short": (lambda ix, d: _first(ix)["paths"].pop(), "columns of different lengths"),
    "class names not a list": (lambda ix, d: ix.__setitem__("class_names", "ant"), "class_names"),
    "a shard that changed": (lambda ix, d: (d / _first(ix)["file"]).write_bytes(b"x" * 1024), "changed after packing"),
    "a newer schema": (lambda ix, d: ix.__setitem__("schema_version", 2), "upgrade dlscale"),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_a_tampered_index_is_one_error_naming_the_file(tmp_path, tampering):
    change, words = TAMPERINGS[tampering]
    shards = _tamper(tmp_path, change)
    with pytest.raises(UserError) as caught:
        load_data(str(shards), WANT)
    message = str(caught.value)
    assert str(shards / "index.json") in message and words in message and "\n" not in message


def test_an_index_that_is_not_json_is_one_error(tmp_path):
    shards = _tamper(tmp_path, lambda ix, d: None)
    (shards / "index.json").write_text('{"kind": "shards", "schema_version": 1, ')
    with pytest.raises(UserError, match="index.json is not valid JSON"):
        load_data(str(shards), WANT)


def test_packing_refuses_a_folder_it_did_not_write_and_replaces_its_own(tmp_path):
    folder = make_folder(tmp_path / "photos", per_class=4)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not image shards from dlscale data pack"):
        pack_image_folder(folder, other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    with pytest.raises(UserError, match="holds no class subfolders of images"):
        pack_image_folder(other, tmp_path / "out")
    assert not (tmp_path / "out").exists()

    first = pack_image_folder(folder, tmp_path / "shards", shard_bytes=20_000)
    again = pack_image_folder(folder, tmp_path / "shards")  # over its own: replaced, now one shard per split
    assert first["shards"] > again["shards"] == 3
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == [
        "index.json", "test-00000.tar", "train-00000.tar", "val-00000.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "photos", "shards"]  # no temporary left
    (tmp_path / "shards" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="also notes.txt"):
        pack_image_folder(folder, tmp_path / "shards")
    assert (tmp_path / "shards" / "notes.txt").read_text() == "mine"


def test_worker_processes_read_the_shards_exactly_like_the_main_process(tmp_path):
    pack_image_folder(make_folder(tmp_path / "photos"), tmp_path / "shards", shard_bytes=20_000)
    splits = load_data(str(tmp_path / "shards"), WANT, augment="standard", image_size=32, seed=1)
    splits.train[0]  # the main process opens a shard before the workers fork
    order = BatchOrder(len(splits.train), 4, seed=0)
    alone = [(x.clone(), y.clone()) for x, y in train_batches(Feed(splits.train, workers=0), order, 2)]
    feed = Feed(splits.train, workers=2)
    try:
        together = [(x.clone(), y.clone()) for x, y in train_batches(feed, order, 2)]
        assert len(alone) == len(together) == 4
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(alone, together))
        rest = [x for x, _ in train_batches(feed, order, 2, start_step=2)]  # a resume mid-epoch
        assert all(torch.equal(a[0], b) for a, b in zip(alone[2:], rest))
    finally:
        feed.close()
