"""Count the writes a home-load job costs the storage, in-process, in about half a minute.

Figures like those ``run.py --home`` reports (durable writes per job, bytes passed to write
calls), which depend on the storage layout and not on the machine, so
a layout change can be judged without sockets, beanstalkd or a quiet machine. A store is
prefilled with ``--stored`` finished jobs with uuid4 ids (``systems/prefill.py``); then each
job is what a home-load job is to the store: a submit that wakes a waiting take in the same
batch, the complete, and the driver's next take, which finds nothing. The first ``--jobs``
jobs warm up (the tails of the trees settle), the next ``--jobs`` are counted, ending with a
checkpoint (a serving store makes one when quiet, every 5 s or so: about 200 home jobs). Pages
are the process's ``wchar`` (``/proc/self/io``) / 4096, as in run.py. A tree from before the
journal (``--src``) counts its LMDB commits instead.

Usage: ``.venv/bin/python bench/home_pages.py [--src DIR] [--stored 50000] [--jobs 300]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
DSID = "ds"
PAGE = 4096


def wchar() -> int:
    """Bytes this process has passed to write calls."""
    with open("/proc/self/io") as io:
        for line in io:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no wchar line")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, help="count for the jobstore package under this src/ dir")
    p.add_argument("--stored", type=int, default=50_000, help="finished jobs stored beforehand")
    p.add_argument("--jobs", type=int, default=300, help="jobs warmed up, then jobs counted")
    args = p.parse_args(argv)
    if args.src is not None:
        sys.path.insert(0, str(args.src.resolve()))
    sys.path[:0] = [str(HERE), str(HERE / "systems")]
    from prefill import prefill

    from jobstore.protocol import Request
    from jobstore.store.operations import Service
    from jobstore.store.storage import Storage

    with tempfile.TemporaryDirectory(dir=HERE / ".work") as work:
        data = Path(work) / "data"
        prefill(data, DSID, args.stored, 1 << 30, guid_ids=True)
        storage = Storage(data)
        service = Service(storage)
        waiting = Request("POST", f"/server/{DSID}/job/take", body={"max": 1, "wait": 200}, id=2)
        empty = Request("POST", f"/server/{DSID}/job/take", body={"max": 1}, id=4)

        def job(i: int) -> None:
            job_id, now = str(uuid.uuid4()), time.time_ns() // 1_000_000
            body = {"job": job_id, "client": "bench", "request": {"n": i}}
            woken: list[Request] = []

            def wake(_: Mapping[str, int]) -> Sequence[Request]:
                new = [] if woken else [waiting]
                woken.extend(new)
                return new

            _, outcomes = service.handle_batch(
                [Request("POST", f"/{DSID}/job/", body=body, id=1)], now, wake
            )
            reply = outcomes[-1].reply
            if reply is None or not reply.body["jobs"]:
                raise RuntimeError("the waiting take was not handed the submitted job")
            report = {"job": job_id, "status": "complete", "response": {"ok": True}}
            service.handle(
                Request("POST", f"/server/{DSID}/job/status", body=report, id=3), now + 1
            )
            service.handle(empty, now + 2)

        journal = getattr(storage, "journal", None)

        def durable() -> int:
            """Commits so far, and batches journaled (none before the journal)."""
            batches = journal.appended if journal is not None else 0
            return int(storage.env.info()["last_txnid"]) + batches

        for i in range(args.jobs):
            job(i)
        if journal is not None:
            storage.checkpoint()
        written, first = wchar(), durable()
        for i in range(args.jobs):
            job(args.jobs + i)
        if journal is not None:
            storage.checkpoint()
        written, writes = wchar() - written, durable() - first
        storage.close()
        shutil.rmtree(data)
    print(
        f"per home-load job ({args.stored:,} stored, {args.jobs} counted): "
        f"{writes / args.jobs:.2f} durable writes (journal records and LMDB commits), "
        f"{written / PAGE / args.jobs:.2f} pages and {written / 1024 / args.jobs:.1f} kB passed "
        "to write calls"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
