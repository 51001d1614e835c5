"""Sample the store with py-spy while the native workload runs, and summarise where its time goes.

py-spy records raw (folded) stacks, idle samples included, so that waiting in
``poll`` (nothing to do) and in the LMDB commit (fsync) show beside CPU work.
The summary counts, for each function, the samples it is on the stack for
(inclusive) and the samples it is the innermost frame of (self), as shares of
the samples taken while the server was not waiting in its poll.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
IDLE_LEAVES = ("poll (zmq/sugar/poll.py", "poll (zmq/backend")


def py_spy() -> str | None:
    """The py-spy executable beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start(pid: int, output: Path) -> subprocess.Popen[bytes]:
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    argv = [exe, "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
    argv += ["--output", str(output), "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes]) -> None:
    """Stop py-spy with SIGINT (it writes its output then) and wait for it, by PID."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _short(frame: str) -> str:
    match = FRAME.match(frame)
    if match is None:
        return frame
    file = match["file"]
    for marker in ("site-packages/", "src/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{match['func']} ({file})"


def summarise(raw: Path, top: int = 40) -> str:
    """A Markdown summary of a raw py-spy recording."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for text in raw.read_text().splitlines():
        stack, _, count_text = text.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if FRAME.match(f)]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        if any(marker in leaf for marker in IDLE_LEAVES):
            idle += count
            continue
        own[_short(leaf)] += count
        for name in {_short(f) for f in frames}:
            inclusive[name] += count
    busy = max(total - idle, 1)
    lines = [
        f"{total} samples at 250 Hz; {idle} ({100 * idle / max(total, 1):.0f}%) waiting in zmq poll; "
        f"shares below are of the other {total - idle}.",
        "",
        "| self % | function |",
        "|---:|---|",
    ]
    lines += [f"| {100 * n / busy:.1f} | `{name}` |" for name, n in own.most_common(top)]
    lines += ["", "| inclusive % | function |", "|---:|---|"]
    lines += [f"| {100 * n / busy:.1f} | `{name}` |" for name, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"
