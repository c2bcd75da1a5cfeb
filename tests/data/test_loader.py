"""Feeds of image files: worker processes, seeded augmentation, unreadable files."""

import numpy as np
import pytest
import torch
from PIL import Image

from dlscale.data import DataSpec, load_data
from dlscale.data.batches import BatchOrder, eval_batches, first_samples, train_batches
from dlscale.data.loader import Feed, auto_workers
from dlscale.hardware.inventory import usable_cores
from dlscale.errors import UserError

WANT = DataSpec("image", (3, 32, 32), 3)


def make_photos(root, per_class=8, size=(160, 120)):
    """root/<class>/<i>.jpg: noisy photos, colour and grey mixed, some oddly sized."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("ant", "bee", "cow")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = size if i % 3 else (size[0] + 37 * i, size[1] + 11 * c)  # every third one another size
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if i % 4 == 1:
                image = image.convert("L")
            image.save(root / name / f"{i}.jpg")


def _epoch(feed, order, epoch):
    return [(x.clone(), y.clone()) for x, y in train_batches(feed, order, epoch)]


def test_standard_augmentation_crops_at_the_model_size_seeded_by_sample_and_epoch(tmp_path):
    make_photos(tmp_path)
    splits = load_data(str(tmp_path), WANT, augment="standard", image_size=48, seed=1)
    assert splits.input_shape == (3, 48, 48) and splits.preprocess["crop"] == pytest.approx(224 / 256)
    order = BatchOrder(len(splits.train), 4, seed=1)
    feed = Feed(splits.train)
    first, again, second = _epoch(feed, order, 0), _epoch(Feed(splits.train), order, 0), _epoch(feed, order, 1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))  # the same crops for the same (sample, epoch)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, second))  # another epoch, other batches and crops
    x, y = first[0]
    assert x.shape == (4, 3, 48, 48) and x.dtype == torch.uint8
    # the same sample in another epoch is cropped elsewhere
    index = order.local_indices(order.permutation(0), 0)[0]
    later = splits.train[(int(index), 1)][0]
    assert not torch.equal(x[0], later)
    # evaluation is the center crop, the same every time
    assert torch.equal(splits.val[0][0], splits.val[0][0])


def test_worker_processes_give_exactly_the_batches_of_the_main_process(tmp_path):
    make_photos(tmp_path)
    splits = load_data(str(tmp_path), WANT, augment="standard", image_size=32)
    order = BatchOrder(len(splits.train), 4, seed=0)
    alone = _epoch(Feed(splits.train, workers=0), order, 3)
    feed = Feed(splits.train, workers=2)
    try:
        for epoch in (3, 3):  # the same persistent workers serve the next epoch
            together = _epoch(feed, order, epoch)
            assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(alone, together))
        assert feed._loader._iterator is not None and feed._loader.persistent_workers
        # resuming mid-epoch with workers reads the remaining batches
        rest = [x for x, _ in train_batches(feed, order, 3, start_step=2)]
        assert all(torch.equal(a[0], b) for a, b in zip(alone[2:], rest))
    finally:
        feed.close()


def test_a_broken_file_met_by_a_worker_stops_with_its_name_not_a_traceback(tmp_path):
    make_photos(tmp_path, per_class=4)
    bad = tmp_path / "bee" / "2.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated: the header reads, the data does not
    splits = load_data(str(tmp_path), WANT, augment="standard", image_size=32)
    dataset = next(d for d in (splits.train, splits.val, splits.test) if str(bad) in d.files)
    feed = Feed(dataset, workers=1)
    try:
        with pytest.raises(UserError) as caught:
            list(eval_batches(feed, 2))
    finally:
        feed.close()
    message = str(caught.value)
    assert message.startswith(f"cannot read image {bad} (") and "--skip-bad-files" in message
    assert "Traceback" not in message and "\n" not in message


def test_skip_bad_files_replaces_a_broken_file_by_the_next_and_counts_it(tmp_path):
    make_photos(tmp_path, per_class=4)
    (tmp_path / "cow" / "0.jpg").write_bytes(b"not a jpeg at all")
    splits = load_data(str(tmp_path), WANT, augment="standard", image_size=32, skip_bad_files=True)
    dataset = next(d for d in (splits.train, splits.val, splits.test) if str(tmp_path / "cow" / "0.jpg") in d.files)
    feed = Feed(dataset, workers=1)
    try:
        batches = list(eval_batches(feed, 2))
    finally:
        feed.close()
    assert sum(len(y) for _, y in batches) == len(dataset)  # every batch full: the next sample stands in
    assert feed.skipped == {dataset.files.index(str(tmp_path / "cow" / "0.jpg"))}


def test_first_samples_are_scaled_model_inputs():
    class Pixels(torch.utils.data.Dataset):
        pixels = True

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.full((1, 2, 2), 255, dtype=torch.uint8), torch.tensor(i)

    x, y = first_samples(Pixels(), 2)
    assert x.dtype == torch.float32 and torch.all(x == 1.0) and y.tolist() == [0, 1]


def test_auto_workers_decode_files_with_the_spare_cores_and_leave_memory_data_alone(tmp_path):
    make_photos(tmp_path, per_class=2)
    files = load_data(str(tmp_path), WANT).train
    tensors = torch.utils.data.TensorDataset(torch.zeros(4, 1), torch.zeros(4))
    assert auto_workers(tensors) == 0
    assert auto_workers(files, local_processes=1) == max(0, min(16, usable_cores() - 1))
    assert auto_workers(files, local_processes=usable_cores()) == 0
