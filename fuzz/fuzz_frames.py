"""Coverage-guided fuzzing of the request path: frame -> codec -> service, for long runs.

    pip install atheris
    python fuzz/fuzz_frames.py -max_total_time=600 fuzz/corpus

Any input must give a reply or a ProtocolError; anything else (an exception, a 500, a terminal
job changing) is a crash that atheris saves to a file for a test to reproduce.
"""

from __future__ import annotations

import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from jobstore.errors import ProtocolError
    from jobstore.protocol import cbor, zest
    from jobstore.service import Service
    from jobstore.states import TERMINAL
    from jobstore.storage import Storage

STORAGE = Storage(tempfile.mkdtemp(prefix="jobstore-fuzz-"), map_size=1 << 26)
SERVICE = Service(STORAGE)
NOW = [1_000_000]
FINISHED: set[tuple[str, str]] = set()


def one_input(data: bytes) -> None:
    try:
        request = (
            zest.decode_request(data)
            if data[:1] in (b"\x01", b"\x02", b"\x04")
            else cbor.decode_request(data)
        )
    except ProtocolError:
        return
    NOW[0] += 997
    expired, [outcome] = SERVICE.handle_batch([request], NOW[0], mono=NOW[0])
    if outcome.reply is not None and outcome.reply.status == 500:
        raise AssertionError(f"internal error for {request!r}: {outcome.reply.error}")
    for change in [*expired, *outcome.changes]:
        key = (change.job.dsid, change.job.job)
        if key in FINISHED:
            raise AssertionError(f"terminal job {key} changed")
        if change.job.status in TERMINAL:
            FINISHED.add(key)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
