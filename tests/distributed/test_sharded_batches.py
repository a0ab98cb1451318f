"""The ranks' slices of the training batches are the single-process loop's batches, in its order."""

from __future__ import annotations

import pytest
import torch

from trustlab.data import make_loader
from trustlab.distributed import Distributed
from trustlab.progress import progress_bar
from trustlab.seeding import derive_seed
from trustlab.threat import LpBall, ShardedBall
from trustlab.training.sharded import ShardedBatches


def _single_order(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches train_run's single-process loop sees (its loader, iterated through the progress bar)."""
    idx = torch.arange(n)
    gen = torch.Generator()
    loader = make_loader(idx, idx, batch_size=batch_size, shuffle=True, generator=gen)
    gen.manual_seed(derive_seed(seed, epoch, 0))
    return [b[1].tolist() for b in progress_bar(loader, desc="x", enabled=False)]


@pytest.mark.parametrize("n, world", [(203, 2), (193, 2), (200, 4)])
def test_slices_concatenate_to_the_single_process_batches(n, world):
    x, y = torch.arange(n).float().view(-1, 1), torch.arange(n)
    ranks = [ShardedBatches(x, y, batch_size=64, seed=5, job=Distributed(rank=r, world_size=world))
             for r in range(world)]
    for epoch in (0, 3):
        for r in ranks:
            r.set_epoch(epoch)
        shards = [list(r) for r in ranks]
        single = _single_order(n, 64, 5, epoch)
        assert all(len(s) == len(single) == len(r) for s, r in zip(shards, ranks))
        for k, batch in enumerate(single):
            parts = [s[k] for s in shards]
            counted = [p for p in parts if p.weight > 0]
            assert [i for p in counted for i in p.y.tolist()] == batch
            assert all(p.total == len(batch) for p in parts)
            # DDP averages over ranks: sum_r (weight_r / W) * mean_r is the mean over the global batch
            assert sum(p.weight for p in parts) == pytest.approx(world)


def test_an_empty_slice_is_a_weightless_stand_in():
    x, y = torch.arange(193).float().view(-1, 1), torch.arange(193)  # the last batch holds one example
    last = list(ShardedBatches(x, y, batch_size=64, seed=0, job=Distributed(rank=1, world_size=2)))[-1]
    assert last.weight == 0.0 and len(last.y) == 1 and last.total == 1 and last.start == 0


def test_batch_size_must_divide_by_the_world_size():
    with pytest.raises(ValueError, match="divisible"):
        ShardedBatches(torch.zeros(10, 1), torch.zeros(10), batch_size=9, seed=0, job=Distributed(0, 2))


@pytest.mark.parametrize("p", [float("inf"), 2.0])
def test_sharded_ball_draws_its_rows_of_the_global_draw(p):
    threat, x = LpBall(0.3, p), torch.rand(10, 1, 4, 4)
    full = threat.random_init(x, generator=torch.Generator().manual_seed(1))
    noise = threat.gaussian(x, generator=torch.Generator().manual_seed(2))
    part = ShardedBall.of(threat, start=6, rows=4, total=10)
    assert torch.equal(part.random_init(x[6:], generator=torch.Generator().manual_seed(1)), full[6:])
    assert torch.equal(part.gaussian(x[6:], generator=torch.Generator().manual_seed(2)), noise[6:])
    with pytest.raises(ValueError, match="its 4 rows"):
        part.random_init(x[:3])
