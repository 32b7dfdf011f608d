"""DistributedDataParallel on a converted model: 2 CPU processes (gloo) match one process
training on the same global batch, gradients and parameters, step by step."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import fastconv

WORLD = 2
STEPS = 3
GLOBAL_BATCH = 4


def make_model():
    # GroupNorm, not BatchNorm: BN's batch statistics differ per shard under DDP.
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8), nn.SiLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4, padding_mode="circular"), nn.ReLU(),
        nn.Conv2d(12, 12, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3),
    ).double()


def train(model, xs, ys, steps):
    """SGD with momentum; returns (per-step gradients, final parameters)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    grads = []
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(xs), ys).backward()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
        opt.step()
    return grads, [p.detach().clone() for p in model.parameters()]


def _worker(rank, store_path, state, x, y, out_path):
    torch.set_num_threads(1)
    fastconv._C.set_debug_poison(True)
    # A file store (no port to race for) and gloo pairs on the loopback device: a TCP
    # rendezvous on a just-freed port, or gloo picking the host's external interface,
    # occasionally aborted a worker on shared CI machines.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=WORLD)
    try:
        model = make_model()
        model.load_state_dict(state)
        fastconv.convert(model, inplace=True)
        assert len(model.fastconv_report.swapped) == 4
        ddp = nn.parallel.DistributedDataParallel(model)
        shard = GLOBAL_BATCH // WORLD
        xs, ys = x[rank * shard:(rank + 1) * shard], y[rank * shard:(rank + 1) * shard]
        grads, params = train(ddp, xs, ys, STEPS)
        if rank == 0:
            torch.save({"grads": grads, "params": params}, out_path)
        # Both ranks leave together: a rank tearing gloo down while its peer still has
        # traffic in flight can abort the peer (std::terminate in a gloo thread).
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo not available")
def test_ddp_matches_single_process(tmp_path):
    torch.manual_seed(0)
    model = make_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(GLOBAL_BATCH, 3, 10, 10, dtype=torch.float64)
    y = torch.randint(0, 3, (GLOBAL_BATCH,))
    out_path = str(tmp_path / "rank0.pt")
    store = str(tmp_path / "store")
    mp.spawn(_worker, args=(store, state, x, y, out_path), nprocs=WORLD, join=True)
    got = torch.load(out_path)

    single = fastconv.convert(make_model())
    single.load_state_dict(state)
    grads, params = train(single, x, y, STEPS)
    for step in range(STEPS):
        for a, b in zip(got["grads"][step], grads[step]):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    for a, b in zip(got["params"], params):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    # And the converted single-process run is torch's own training.
    ref = make_model()
    ref.load_state_dict(state)
    _, ref_params = train(ref, x, y, STEPS)
    for a, b in zip(params, ref_params):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
