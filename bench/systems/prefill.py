"""Fill a jobstore data directory with finished jobs, in-process, for the 1M-jobs-stored runs.

The records go in through :class:`jobstore.store.storage.Storage` exactly as the
service would leave them after submit, take and complete: status ``complete``,
one attempt, a response, their index entries, the store's change counter and
each notification topic's last seq. They belong to other clients than the
benchmark's, in the same datasource, so the measured client's catch-up does not
page through them but every index the driver and client touch is a million deep.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from harness import RESPONSE, make_request

from jobstore.protocol.sealed import client_topic, server_topic
from jobstore.records import Job
from jobstore.states import Status
from jobstore.store.keys import SEQ_KEY
from jobstore.store.storage import Storage

BATCH = 50_000
CLIENTS = 1000


def prefill(data_dir: Path, dsid: str, jobs: int, map_size: int, guid_ids: bool = False) -> float:
    """Write ``jobs`` complete jobs into ``data_dir``; return the seconds it took.

    Job ids are ``old-<seq>``, or with ``guid_ids`` random uuid4 strings, as Databox
    clients send (they scatter over the ``jobs`` tree instead of filling its end).
    """
    start = time.monotonic()
    storage = Storage(data_dir, map_size=map_size)
    try:
        with storage.read() as txn:
            seq = txn.seq()
        stamp = time.time_ns() // 1_000_000
        for first in range(0, jobs, BATCH):
            last_seq: dict[str, int] = {}
            with storage.write() as txn:
                for i in range(first, min(first + BATCH, jobs)):
                    seq += 1
                    client = f"old-client-{i % CLIENTS}"
                    job = Job(
                        dsid,
                        str(uuid.uuid4()) if guid_ids else f"old-{seq}",
                        client,
                        make_request(i),
                        Status.COMPLETE,
                        stamp,
                        stamp,
                        seq,
                        attempts=1,
                        response=RESPONSE,
                    )
                    txn.put(job, None)
                    last_seq[client_topic(dsid, client)] = seq
                last_seq[server_topic(dsid)] = seq
                for topic, topic_seq in last_seq.items():
                    txn.set_topic_seq(topic, topic_seq)
                txn.set_counter(SEQ_KEY, seq)
    finally:
        storage.close()
    return time.monotonic() - start
