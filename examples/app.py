"""An app that submits jobs and watches them to their outcome.

Run against `make run` (with examples/driver.py running):  python examples/app.py sensor-jobs
"""

from __future__ import annotations

import argparse

from jobstore.client import JobClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dsid", nargs="?", default="sensor-jobs")
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:5555")
    parser.add_argument("--notify-endpoint", help="default: the request port + 2")
    parser.add_argument("--client", default="example-app")
    parser.add_argument("--jobs", type=int, default=3)
    args = parser.parse_args()
    with JobClient(
        args.endpoint, args.dsid, args.client, notify_endpoint=args.notify_endpoint
    ) as app:
        submitted = [app.submit({"samples": 3}) for _ in range(args.jobs)]
        pending = {record["job"] for record in submitted}
        # Watch from just before the first of these jobs: every later change is seen.
        for record in app.watch(since=min(r["seq"] for r in submitted) - 1):
            if record["job"] not in pending:
                continue
            finished = record["status"] in ("complete", "cancelled", "failed", "forbidden")
            detail = record.get("response") if finished else record.get("progress")
            print(record["job"][:8], record["status"], detail)
            if finished:
                pending.discard(record["job"])
                if not pending:
                    break


if __name__ == "__main__":
    main()
