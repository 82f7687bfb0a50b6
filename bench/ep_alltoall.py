"""Share of an EP=2 training step (forward + backward) spent in the expert all-to-alls, on CPU
processes (gloo), at the default params.yaml model and micro-batch shape.

    torchrun --nproc-per-node 2 bench/ep_alltoall.py [STEPS]
"""

from __future__ import annotations

import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.profiler import ProfilerActivity, profile

from pipeline.config import ParallelConfig, TrainConfig
from pipeline.model import MoETransformer
from pipeline.parallel.setup import DP_DIM, EP_DIM, parallelize

COLLECTIVE_OPS = ("all_to_all", "wait_tensor")


def main(steps: int = 3) -> None:
    dist.init_process_group("gloo")
    cfg = TrainConfig()
    mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=(DP_DIM, EP_DIM))
    torch.manual_seed(0)
    model = MoETransformer(cfg.model, 4096)
    parallelize(model, ParallelConfig(expert_parallel=2), mesh)
    idx = torch.randint(0, 4096, (cfg.micro_batch_size, cfg.seq_len))

    def step() -> None:
        out = model(idx)
        (out.logits.float().logsumexp(-1).mean() + out.aux_loss).backward()

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps
    comm_us = sum(
        e.self_cpu_time_total
        for e in prof.key_averages()
        if any(k in e.key for k in COLLECTIVE_OPS)
    )
    comm = comm_us / 1e6 / steps
    if dist.get_rank() == 0:
        tokens = cfg.micro_batch_size * cfg.seq_len
        print(
            f"EP=2, {tokens} tokens/rank, step {wall * 1e3:.0f} ms (profiled), "
            f"all-to-all {comm * 1e3:.0f} ms = {100 * comm / wall:.1f} %"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
