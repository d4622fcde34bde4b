"""Run by the deepspeed launcher in the multi-node tests: all-reduce each rank's id + 1, record it.

Usage: allreduce_script.py OUT_DIR   (writes OUT_DIR/rank{RANK}.json)
"""

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    out = Path(sys.argv[-1])
    # The launcher passes rank, world size and the rendezvous through the environment.
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    record = {
        "rank": rank,
        "world_size": world_size,
        "sum": value.item(),
        "node_rank": int(os.environ.get("CROSS_RANK", -1)),
        "local_rank": int(os.environ["LOCAL_RANK"]),
        "master": f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
