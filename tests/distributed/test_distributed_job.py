"""trustlab.distributed on one process (no process group) and its pure pieces: the environment, shard bounds."""

from __future__ import annotations

import pytest
import torch

from trustlab.distributed import SINGLE, Distributed, distributed, from_env, shard_bounds


def test_no_torchrun_environment_is_the_single_process():
    assert from_env({}) is SINGLE
    with distributed("cpu", environ={}) as job:
        assert job is SINGLE and not torch.distributed.is_initialized()
        assert job.all_gather_object({"a": 1}) == [{"a": 1}]
        assert job.broadcast_object(3) == 3
        t = torch.arange(3)
        assert job.all_gather(t)[0] is t
        job.barrier()


def test_one_process_under_torchrun_creates_no_process_group():
    with distributed("cpu", environ={"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) as job:
        assert job is SINGLE and not torch.distributed.is_initialized()


def test_environment_is_read_and_checked():
    job = from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (job.rank, job.world_size, job.local_rank, job.enabled, job.is_main) == (1, 4, 1, True, False)
    assert job.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert job.device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="integers"):
        from_env({"RANK": "a", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ValueError, match="rank must be < world_size"):
        Distributed(rank=2, world_size=2)


@pytest.mark.parametrize("n, world", [(64, 2), (11, 2), (1, 2), (10, 3), (0, 2)])
def test_shard_bounds_tile_the_batch(n, world):
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1
