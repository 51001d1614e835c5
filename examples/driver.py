"""A driver that reads a (pretend) sensor per job, reports progress and honours cancel.

Run against `make run`:  python examples/driver.py sensor-jobs
Ctrl-C hands the job it is running back to the queue (retrying) and exits 130.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time

from jobstore.client import Driver, JobCancelled, JobContext


def read_sensor(ctx: JobContext) -> dict[str, float]:
    steps = int(ctx.request.get("samples", 3)) if isinstance(ctx.request, dict) else 3
    readings = []
    for done in range(steps):
        if ctx.cancel_requested:
            raise JobCancelled(f"stopped after {done} of {steps} samples")
        readings.append(20 + random.random() * 5)
        ctx.progress({"done": done + 1, "total": steps})
        time.sleep(0.1)
    return {"celsius": round(sum(readings) / len(readings), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dsid", nargs="?", default="sensor-jobs")
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5555")
    parser.add_argument("--max-jobs", type=int)
    args = parser.parse_args()
    # The driver says in one line when the store is away and back, and what Ctrl-C did.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with Driver(args.endpoint, args.dsid) as driver:
            print(f"ran {driver.run(read_sensor, max_jobs=args.max_jobs)} job(s)")
    except KeyboardInterrupt:
        sys.exit(130)  # Driver.run has handed back the job it was running, and said so


if __name__ == "__main__":
    main()
