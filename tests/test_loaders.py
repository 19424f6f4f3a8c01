import torch

from cifar_lit.data.loaders import TensorBatchLoader


def loader(n=100, batch=16, shuffle=True, drop_last=True, epoch=0, rank=0, world=1, seed=0):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2)
    labels = torch.arange(n)
    return TensorBatchLoader(images, labels, batch, shuffle=shuffle, drop_last=drop_last, seed=seed, rank=rank,
                             world_size=world, epoch_fn=lambda: epoch)


def labels_of(batches):
    return [b[1].tolist() for b in batches]


def test_order_depends_only_on_seed_and_epoch():
    assert labels_of(loader(epoch=3)) == labels_of(loader(epoch=3))
    assert labels_of(loader(epoch=3)) != labels_of(loader(epoch=4))
    assert labels_of(loader(seed=1)) != labels_of(loader(seed=2))


def test_training_epoch_drops_the_last_partial_batch_without_repeats():
    batches = labels_of(loader(n=100, batch=16))
    assert len(batches) == len(loader(n=100, batch=16)) == 6
    flat = [label for batch in batches for label in batch]
    assert len(flat) == len(set(flat)) == 96


def test_evaluation_covers_every_sample_once_in_order():
    batches = labels_of(loader(n=100, batch=30, shuffle=False, drop_last=False))
    assert [len(b) for b in batches] == [30, 30, 30, 10]
    assert sum(batches, []) == list(range(100))


def test_ranks_split_evaluation_exactly_even_when_uneven():
    shards = [sum(labels_of(loader(n=101, batch=16, shuffle=False, drop_last=False, rank=r, world=3)), [])
              for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(101))
    assert [len(s) for s in shards] == [34, 34, 33]


def test_ranks_train_on_disjoint_equal_shares():
    shards = [sum(labels_of(loader(n=100, batch=10, rank=r, world=2)), []) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 50
    assert not set(shards[0]) & set(shards[1])


def test_resumes_mid_epoch_at_the_next_unseen_batch():
    full = labels_of(loader(epoch=2))
    first = loader(epoch=2)
    iterator = iter(first)
    for _ in range(3):
        next(iterator)
        first.next_batch_key()
    next(iterator)  # fetched ahead but never trained on
    state = first.state_dict()
    assert state == {"epoch": 2, "consumed": 3}
    resumed = loader(epoch=2)
    resumed.load_state_dict(state)
    assert labels_of(resumed) == full[3:]
    assert labels_of(resumed) == full  # the next epoch pass starts from the beginning again


def test_batch_keys_count_consumed_batches():
    source = loader(epoch=5)
    iter(source)
    assert [source.next_batch_key() for _ in range(2)] == [(5, 0), (5, 1)]
