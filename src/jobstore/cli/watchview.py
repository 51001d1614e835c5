"""How ``jobstore watch`` draws a :class:`~jobstore.cli.watchstate.WatchState`: a rich Live
screen on a terminal, else one summary line a second, or JSON lines for scripts."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol, TextIO

from .watchstate import DISPLAY_ORDER, WatchState, label

if TYPE_CHECKING:
    from rich.console import RenderableType

Output = Literal["auto", "live", "plain", "json"]

RICH_HINT = "the live view needs rich: pip install 'jobstore[watch]'"


class View(Protocol):
    def draw(self, state: WatchState, problem: str | None) -> None: ...

    def close(self) -> None: ...


def _now_text() -> str:
    return datetime.now().strftime("%H:%M:%S")


def _ms_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S.%f")[:-3]


class PlainView:
    """One summary line per draw, for pipes, logs and dumb terminals."""

    def __init__(self, out: TextIO, label: str) -> None:
        self._out, self._label = out, label

    def draw(self, state: WatchState, problem: str | None) -> None:
        counts = "  ".join(f"{label(name)} {n}" for name, n in state.counts.items()) or "no jobs"
        changes, finished = state.rates()
        line = (
            f"{_now_text()} {self._label}  {counts} | {changes:.1f} changes/s "
            f"{finished:.1f} finished/s | seq {state.seq}"
        )
        if state.delayed:
            line += f" | {state.delayed} delayed"
        if state.paused:
            line += " | PAUSED"
        if problem:
            line += f" | {problem}"
        print(line, file=self._out, flush=True)

    def close(self) -> None:
        pass


class JsonView:
    """One JSON object per draw: the state's summary with the time and what is watched."""

    def __init__(self, out: TextIO, dsid: str, client: str | None) -> None:
        self._out, self._dsid, self._client = out, dsid, client

    def draw(self, state: WatchState, problem: str | None) -> None:
        head = {"time": round(time.time(), 3), "dsid": self._dsid, "client": self._client}
        line = json.dumps({**head, "problem": problem, **state.summary()})
        print(line, file=self._out, flush=True)

    def close(self) -> None:
        pass


STATUS_STYLES = {
    "submitted": "blue",
    "retrying": "yellow",
    "accepted": "cyan",
    "complete": "green",
    "cancelled": "magenta",
    "forbidden": "red",
    "failed": "bold red",
}


class LiveView:
    """A rich Live screen redrawn in place: plain ANSI, no mouse, so it works over SSH."""

    def __init__(self, out: TextIO, label: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self._label = label
        self._console = Console(file=out, force_terminal=True)
        self._live = Live(
            console=self._console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
            vertical_overflow="crop",
        )
        self._live.start()

    def draw(self, state: WatchState, problem: str | None) -> None:
        self._live.update(self._render(state, problem), refresh=True)

    def close(self) -> None:
        self._live.stop()

    def _render(self, state: WatchState, problem: str | None) -> RenderableType:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        parts: list[RenderableType] = [
            Text.assemble(
                ("jobstore watch ", "bold"),
                (self._label, "bold cyan"),
                ("   PAUSED" if state.paused else "", "bold red"),
                (f"   {state.delayed} delayed" if state.delayed else "", "yellow"),
                f"   seq {state.seq}   {_now_text()}",
            )
        ]
        if problem:
            parts.append(Text(problem, style="bold red"))
        counts = state.counts
        grid = Table.grid(padding=(0, 3))
        names = [*DISPLAY_ORDER, *(n for n in counts if n not in DISPLAY_ORDER)]
        for _ in names:
            grid.add_column(justify="right")
        grid.add_row(*(Text(label(n), style=STATUS_STYLES.get(n, "")) for n in names))
        grid.add_row(*(str(counts.get(n, 0)) for n in names))
        changes, finished = state.rates()
        parts += [
            Text(),
            grid,
            Text(),
            Text.assemble(
                (f"{changes:,.1f}", "bold"),
                " changes/s   ",
                (f"{finished:,.1f}", "bold"),
                f" jobs finished/s   over the last {state.window:g} s;"
                f" {state.unfinished} unfinished",
            ),
        ]
        # Fit the screen: the header lines above, and a title and a header row per table.
        room = self._console.size.height - len(parts) - 6
        running = state.running
        shown = min(len(running), max(0, room // 2))
        if running:
            bars = Table(box=None, title="running", title_justify="left", show_header=False)
            bars.add_column(no_wrap=True, overflow="ellipsis", max_width=32)
            bars.add_column(no_wrap=True, overflow="ellipsis", max_width=20)
            bars.add_column()
            bars.add_column(justify="right", no_wrap=True)
            for p in running[:shown]:
                bar = ProgressBar(total=p.total, completed=min(p.done, p.total), width=30)
                bars.add_row(p.job, p.client, bar, f"{p.done:g}/{p.total:g} {p.fraction:4.0%}")
            if shown < len(running):
                bars.add_row(Text(f"… and {len(running) - shown} more", style="dim"))
            parts += [Text(), bars]
            room -= shown + 2
        recent = Table(box=None, title="recent changes", title_justify="left")
        recent.add_column("time", no_wrap=True)
        recent.add_column("job", no_wrap=True, overflow="ellipsis", max_width=40)
        recent.add_column("client", no_wrap=True, overflow="ellipsis", max_width=24)
        recent.add_column("status", no_wrap=True)
        for change in state.recent[: max(1, room)]:
            recent.add_row(
                _ms_text(change.updated),
                change.job,
                change.client,
                Text(change.label, style=STATUS_STYLES.get(change.status, "")),
            )
        parts += [Text(), recent]
        return Group(*parts)


def rich_available() -> bool:
    """Whether rich can be imported (the ``watch`` extra)."""
    try:
        import rich.live  # noqa: F401
    except ImportError:
        return False
    return True


def choose_output(requested: Output, out: TextIO) -> tuple[Output, str | None]:
    """The output to use, and why the live view was not chosen when it would have been wanted.

    ``auto`` is the live view on a terminal that can move its cursor, with rich installed;
    else plain lines.
    """
    if requested != "auto":
        return requested, None
    if not out.isatty() or os.environ.get("TERM", "dumb") in ("", "dumb"):
        return "plain", None
    if not rich_available():
        return "plain", RICH_HINT
    return "live", None
