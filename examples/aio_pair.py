"""An asyncio app and an asyncio driver in one event loop, on jobstore.aio.

The app submits jobs all at once and watches them to their outcome; the driver
reads a (pretend) sensor per job, reports progress and honours cancel. Run both
against `make run`:  python examples/aio_pair.py sensor-jobs
or one side only, paired with examples/app.py or examples/driver.py:  --role app|driver
Ctrl-C hands the job the driver is running back to the queue (retrying) and exits 130.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys

from jobstore.aio import Driver, JobCancelled, JobClient, JobContext

FINISHED = ("complete", "cancelled", "failed", "forbidden")


async def read_sensor(ctx: JobContext) -> dict[str, float]:
    steps = int(ctx.request.get("samples", 3)) if isinstance(ctx.request, dict) else 3
    readings = []
    for done in range(steps):
        if ctx.cancel_requested:
            raise JobCancelled(f"stopped after {done} of {steps} samples")
        readings.append(20 + random.random() * 5)
        ctx.progress({"done": done + 1, "total": steps})
        await asyncio.sleep(0.1)
    return {"celsius": round(sum(readings) / len(readings), 2)}


async def app(args: argparse.Namespace) -> None:
    async with JobClient(
        args.endpoint, args.dsid, args.client, notify_endpoint=args.notify_endpoint
    ) as client:
        submitted = await asyncio.gather(*(client.submit({"samples": 3}) for _ in range(args.jobs)))
        pending = {record["job"] for record in submitted}
        # Watch from just before the first of these jobs: every later change is seen.
        since = min(r["seq"] for r in submitted) - 1
        async with client.watch(since=since, timeout=60) as watch:
            async for record in watch:
                if record["job"] not in pending:
                    continue
                finished = record["status"] in FINISHED
                detail = record.get("response") if finished else record.get("progress")
                print(record["job"][:8], record["status"], detail, flush=True)
                if finished:
                    pending.discard(record["job"])
                    if not pending:
                        break


async def driver(args: argparse.Namespace) -> None:
    async with Driver(args.endpoint, args.dsid) as server:
        print(f"ran {await server.run(read_sensor, max_jobs=args.max_jobs)} job(s)", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dsid", nargs="?", default="sensor-jobs")
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5555")
    parser.add_argument("--notify-endpoint", help="default: the request port + 2")
    parser.add_argument("--client", default="example-aio-app")
    parser.add_argument("--jobs", type=int, default=3, help="jobs the app submits")
    parser.add_argument(
        "--max-jobs", type=int, help="jobs the driver runs (default: --jobs with --role both)"
    )
    parser.add_argument("--role", choices=("both", "app", "driver"), default="both")
    args = parser.parse_args()
    if args.role == "both":
        args.max_jobs = args.max_jobs or args.jobs
        await asyncio.gather(app(args), driver(args))
    elif args.role == "app":
        await app(args)
    else:
        await driver(args)


if __name__ == "__main__":
    # The driver says in one line when the store is away and back, and what Ctrl-C did.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)  # Driver.run has handed back the job it was running, and said so
