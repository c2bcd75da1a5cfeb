import torch
from torch.utils.data import Dataset, TensorDataset

from dlscale.data.batches import BatchOrder, eval_batches, train_batches
from dlscale.data.loader import Feed


def test_epoch_visits_a_seeded_permutation_without_the_partial_batch():
    order = BatchOrder(num_samples=10, global_batch=3, seed=1)
    ds = TensorDataset(torch.arange(10), torch.arange(10))
    seen = torch.cat([x for x, _ in train_batches(Feed(ds), order, epoch=0)])
    assert order.steps_per_epoch == 3 and len(seen) == 9 and len(set(seen.tolist())) == 9
    again = torch.cat([x for x, _ in train_batches(Feed(ds), order, epoch=0)])
    other_epoch = torch.cat([x for x, _ in train_batches(Feed(ds), order, epoch=1)])
    assert torch.equal(seen, again) and not torch.equal(seen, other_epoch)


def test_resuming_mid_epoch_yields_the_remaining_batches():
    order = BatchOrder(num_samples=20, global_batch=4, seed=0)
    ds = TensorDataset(torch.arange(20), torch.arange(20))
    full = [x for x, _ in train_batches(Feed(ds), order, epoch=2)]
    rest = [x for x, _ in train_batches(Feed(ds), order, epoch=2, start_step=3)]
    assert len(rest) == 2 and all(torch.equal(a, b) for a, b in zip(full[3:], rest))


def test_ranks_split_each_global_batch_into_contiguous_slices():
    ds = TensorDataset(torch.arange(16), torch.arange(16))
    whole = [x for x, _ in train_batches(Feed(ds), BatchOrder(16, 8, seed=3), epoch=0)]
    parts = [[x for x, _ in train_batches(Feed(ds), BatchOrder(16, 8, seed=3, rank=r, world=2), epoch=0)] for r in (0, 1)]
    for step, batch in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][step], parts[1][step]]), batch)


class Lazy(Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.tensor([float(i)]), torch.tensor(i)


def test_lazy_datasets_go_through_a_dataloader_in_the_same_order():
    order = BatchOrder(12, 4, seed=5)
    eager = [y for _, y in train_batches(Feed(TensorDataset(torch.zeros(12, 1), torch.arange(12))), order, epoch=0)]
    for workers in (0, 2):
        lazy = [y for _, y in train_batches(Feed(Lazy(), workers=workers), order, epoch=0)]
        assert len(lazy) == 3 and all(torch.equal(a, b) for a, b in zip(lazy, eager))


def test_evaluation_counts_every_sample_exactly_once_across_ranks():
    ds = TensorDataset(torch.arange(11), torch.arange(11))
    for world in (1, 2, 3):
        seen = [int(v) for r in range(world) for x, _ in eval_batches(Feed(ds), 4, rank=r, world=world) for v in x]
        assert sorted(seen) == list(range(11))
