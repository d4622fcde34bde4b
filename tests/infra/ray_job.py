"""Entrypoint submitted by the Ray tests: squares 0..9 on the cluster's workers, records the result.

Usage: ray_job.py OUT_FILE [EXIT_CODE]   (a non-zero EXIT_CODE makes the job fail on purpose)
"""

import json
import sys
from pathlib import Path

import ray


@ray.remote
def square(x: int) -> int:
    return x * x


def main() -> None:
    ray.init()  # RAY_ADDRESS is set by the job supervisor: joins the cluster, starts nothing
    total = sum(ray.get([square.remote(i) for i in range(10)]))
    record = {"sum": total, "cluster_cpus": ray.cluster_resources().get("CPU"), "cwd": str(Path.cwd())}
    Path(sys.argv[1]).write_text(json.dumps(record))
    sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)


if __name__ == "__main__":
    main()
