"""Turn the JSON lines of a benchmark into results.md (medians, min-max, ratios, targets) and chart.png."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import scheduling  # bench/scheduling.py: its figures' table

BASELINE = "beanstalkd-durable"
NATIVE = "jobstore-native"
MILLION = "jobstore-native-1M"
GROUP_COMMIT = "ceiling-group-commit"
ECHO = "ceiling-echo"
RSS_LIMIT_MB = 150.0
ORDER = [
    NATIVE,
    MILLION,
    "jobstore-zest",
    BASELINE,
    "beanstalkd-memory",
    "rq-redis-durable",
    ECHO,
    GROUP_COMMIT,
]

Line = dict[str, Any]
Metric = Callable[[Line], float | None]


def load(path: Path) -> list[Line]:
    return [json.loads(text) for text in path.read_text().splitlines() if text.strip()]


def phase_value(phase: str, key: str) -> Metric:
    def get(line: Line) -> float | None:
        value = line.get("phases", {}).get(phase, {}).get(key)
        return None if value is None else float(value)

    return get


def memory(key: str) -> Metric:
    def get(line: Line) -> float | None:
        kb = line.get("server_memory_kb", {}).get(key)
        return None if kb is None else kb / 1024

    return get


rss_mb = memory("VmHWM")
WHO = ("server", "driver", "client")


def cpu_per_job(who: str) -> Metric:
    def get(line: Line) -> float | None:
        phase = line.get("phases", {}).get("throughput", {})
        value = phase.get("cpu_ms_per_job", {}).get(who)
        return None if value is None else float(value)

    return get


def req_s(line: Line) -> float | None:
    value = line.get("req_s")
    return None if value is None else float(value)


SUBMIT = phase_value("throughput", "submit_jobs_s")
SUBMIT_ONLY = phase_value("submit-only", "submit_jobs_s")
E2E = phase_value("throughput", "e2e_jobs_s")
P50_100 = phase_value("open-100", "p50_ms")
P99_100 = phase_value("open-100", "p99_ms")
P50_500 = phase_value("open-500", "p50_ms")
P99_500 = phase_value("open-500", "p99_ms")
ACHIEVED_500 = phase_value("open-500", "e2e_jobs_s")
DEVICE = phase_value("throughput", "device_kb_per_job")
WCHAR = phase_value("throughput", "wchar_kb_per_job")
COMMITS = phase_value("throughput", "commits_per_job")
FLUSHES = phase_value("throughput", "flushes_per_job")
JOURNALED = phase_value("throughput", "journaled_per_job")
# Runs before the device figures reported /proc/PID/io write_bytes, which large page-cache
# folios inflate (README.md): shown only for those, and labelled so.
FOLIO_INFLATED = phase_value("throughput", "server_write_kb_per_job")

HOME_BASELINE = "home-beanstalkd-durable"
HOME_NATIVE = "home-jobstore-native"
HOME_ZEST = "home-jobstore-zest"


def home_cpu(line: Line) -> float | None:
    value = line.get("phases", {}).get("home", {}).get("cpu_ms_per_job", {}).get("server")
    return None if value is None else float(value)


def home_idle_kb(line: Line) -> float | None:
    """The machine's background device writes over the phase, per job, from the idle window."""
    phase = line.get("phases", {}).get("home", {})
    rate, seconds, jobs = (
        line.get("device_idle_bytes_s"),
        phase.get("io_seconds"),
        phase.get("jobs"),
    )
    if rate is None or not seconds or not jobs:
        return None
    return float(rate) * float(seconds) / 1024 / int(jobs)


HOME_P50 = phase_value("home", "p50_ms")
HOME_P99 = phase_value("home", "p99_ms")
HOME_DEVICE = phase_value("home", "device_kb_per_job")
HOME_WCHAR = phase_value("home", "wchar_kb_per_job")
HOME_COMMITS = phase_value("home", "commits_per_job")
HOME_FLUSHES = phase_value("home", "flushes_per_job")
HOME_JOURNALED = phase_value("home", "journaled_per_job")
HOME_RATE = phase_value("home", "e2e_jobs_s")
HOME_COLUMNS: list[tuple[str, Metric, str]] = [
    ("server CPU ms/job", home_cpu, "{:.3f}"),
    ("p50 ms", HOME_P50, "{:.2f}"),
    ("p99 ms", HOME_P99, "{:.2f}"),
    ("device kB/job", HOME_DEVICE, "{:.1f}"),
    ("idle device kB/job", home_idle_kb, "{:.1f}"),
    ("wchar kB/job", HOME_WCHAR, "{:.1f}"),
    ("LMDB commits/job", HOME_COMMITS, "{:.2f}"),
    ("journaled/job", HOME_JOURNALED, "{:.2f}"),
    ("flushes/job", HOME_FLUSHES, "{:.2f}"),
    ("jobs/s", HOME_RATE, "{:.0f}"),
]
HOME_TARGETS: list[tuple[str, Metric, float]] = [
    ("server CPU per job", home_cpu, 2.0),
    ("p50 latency, submit → outcome known", HOME_P50, 1.5),
    ("p99 latency", HOME_P99, 2.0),
    ("bytes written to the device per job", HOME_DEVICE, 3.0),
]

COLUMNS: list[tuple[str, Metric, str]] = [
    ("submit jobs/s", SUBMIT, "{:.0f}"),
    ("submit-only jobs/s", SUBMIT_ONLY, "{:.0f}"),
    ("end-to-end jobs/s", E2E, "{:.0f}"),
    ("p50 ms @100/s", P50_100, "{:.1f}"),
    ("p99 ms @100/s", P99_100, "{:.1f}"),
    ("p50 ms @500/s", P50_500, "{:.1f}"),
    ("p99 ms @500/s", P99_500, "{:.1f}"),
    ("server peak RSS MB", rss_mb, "{:.0f}"),
]


class Figures:
    """The lines of one benchmark invocation, grouped by system and run."""

    def __init__(self, lines: Sequence[Line]) -> None:
        self.lines = [line for line in lines if line.get("kind") == "result"]
        self.meta = next((line for line in lines if line.get("kind") == "meta"), {})
        self.end = next((line for line in lines if line.get("kind") == "end"), {})
        self.scheduling = next((line for line in lines if line.get("kind") == "scheduling"), {})
        found = {line["system"] for line in self.lines}
        self.systems = [s for s in ORDER if s in found] + sorted(found - set(ORDER))

    def by_run(self, system: str) -> dict[int, Line]:
        return {line["run"]: line for line in self.lines if line["system"] == system}

    def values(self, system: str, metric: Metric) -> list[float]:
        found = (metric(line) for line in self.by_run(system).values())
        return [v for v in found if v is not None]

    def ratios(self, system: str, metric: Metric, base: str, base_metric: Metric) -> list[float]:
        """Per run, ``metric`` of ``system`` over ``base_metric`` of ``base`` in the same run."""
        mine, theirs = self.by_run(system), self.by_run(base)
        out = []
        for run, line in mine.items():
            a = metric(line)
            b = base_metric(theirs[run]) if run in theirs else None
            if a is not None and b:
                out.append(a / b)
        return out


def spread(values: Sequence[float], fmt: str) -> str:
    """``median (min-max)``, or ``-`` when there is nothing."""
    if not values:
        return "-"
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def render(figures: Figures) -> str:
    meta = figures.meta
    out = ["# jobstore benchmark results", ""]
    out.append(
        f"Run {meta.get('started', '?')} on {meta.get('cpus', '?')} CPUs ({meta.get('cpu', '?')}), "
        f"Python {meta.get('python', '?')}, data on {meta.get('data_fs', '?')}, "
        f"commit {meta.get('commit', '?')}; {meta.get('runs', '?')} runs, "
        f"{meta.get('jobs', '?')} jobs in the throughput phase, "
        f"{meta.get('open_100_seconds', '?')} s at 100 jobs/s and "
        f"{meta.get('open_500_seconds', '?')} s at 500 jobs/s. "
        "Each cell: median over the runs (min-max). See README.md for how to read it."
    )
    if figures.end:
        out += [
            "",
            f"Load average (1 min) at the start {meta.get('loadavg', '?')}, at the end "
            f"{figures.end.get('loadavg', '?')}; the whole benchmark took "
            f"{figures.end.get('seconds', '?')} s.",
        ]
    systems = [s for s in figures.systems if not s.startswith(("ceiling-", "home-"))]
    if systems:
        out += batch_tables(figures, systems)
    if any(s.startswith("home-") for s in figures.systems):
        out += home_tables(figures)
    if figures.scheduling:
        out += scheduling.table(figures.scheduling)
    out.append("")
    return "\n".join(out)


def home_tables(figures: Figures) -> list[str]:
    """The home-load phase: per-system figures, then ratios against durable beanstalkd."""
    meta = figures.meta
    homes = [s for s in figures.systems if s.startswith("home-")]
    out = ["", "## Home load: one job at a time", ""]
    out.append(
        f"{meta.get('home_jobs', '?')} jobs per run, one at a time (submit, outcome known by "
        f"notification, {1000 * float(meta.get('home_pause_s') or 0):.0f} ms pause), uuid4 job "
        f"ids, jobstore prefilled with {meta.get('home_stored', '?'):,} finished jobs. "
        f"Device bytes are machine-wide writes to {meta.get('device', '?')}; 'idle device' is "
        "what the machine wrote with nothing of the benchmark running, measured just before, "
        "scaled to the phase's length: the noise floor of the device column."
    )
    out += ["", "| system | " + " | ".join(n for n, _, _ in HOME_COLUMNS) + " |"]
    out.append("|---|" + "---:|" * len(HOME_COLUMNS))
    for system in homes:
        cells = [spread(figures.values(system, metric), fmt) for _, metric, fmt in HOME_COLUMNS]
        out.append(f"| {system} | " + " | ".join(cells) + " |")
    out += ["", f"### Ratios against {HOME_BASELINE} in the same run, and the targets", ""]
    out.append("| per job | " + " | ".join(s for s in homes if s != HOME_BASELINE) + " | target |")
    out.append("|---|" + "---:|" * (len(homes) - 1) + "---:|")
    swamped = background_swamps(figures, homes)
    for text, metric, limit in HOME_TARGETS:
        cells = []
        for system in homes:
            if system == HOME_BASELINE:
                continue
            ratios = figures.ratios(system, metric, HOME_BASELINE, metric)
            met = ratios and statistics.median(ratios) <= limit
            mark = "" if not ratios or system != HOME_NATIVE else (" ✓" if met else " ✗")
            if metric is HOME_DEVICE and swamped:
                mark = " (background)"
            cells.append(spread(ratios, "{:.2f}") + mark)
        out.append(f"| {text} | " + " | ".join(cells) + f" | ≤ {limit:g}x |")
    out += [
        "",
        "✓/✗: the median ratio of jobstore-native meets the issue's target or not. "
        "jobstore-zest (REQ submits, Zest observe) has no target of its own here.",
    ]
    if swamped:
        out += [
            "",
            f"**The device figures of this run are not to be trusted**: in {swamped} the "
            f"machine's background writes (idle device) were at least {BACKGROUND_LIMIT:.0%} "
            "of the measured figure, so the device ratio is mostly other processes' writes. "
            "Use wchar and flushes per job, or run on a device of its own (README.md).",
        ]
    return out


BACKGROUND_LIMIT = 0.25


def background_swamps(figures: Figures, systems: list[str]) -> str:
    """Which system's runs had background device writes of BACKGROUND_LIMIT or more of
    their device figure ("" if none): their device figures measure the machine, not them."""
    found = []
    for system in systems:
        for run, line in sorted(figures.by_run(system).items()):
            idle, device = home_idle_kb(line), HOME_DEVICE(line)
            if idle is not None and device and idle >= BACKGROUND_LIMIT * device:
                found.append(f"{system} run {run}")
    return ", ".join(found)


def batch_tables(figures: Figures, systems: list[str]) -> list[str]:
    """The batch phases (throughput, open loop, submit-only), the ceilings and the targets."""
    out = ["", "## Every system", ""]
    out.append("| system | " + " | ".join(name for name, _, _ in COLUMNS) + " |")
    out.append("|---|" + "---:|" * len(COLUMNS))
    for system in systems:
        cells = [spread(figures.values(system, metric), fmt) for _, metric, fmt in COLUMNS]
        out.append(f"| {system} | " + " | ".join(cells) + " |")

    out += ["", f"## Ratios against {BASELINE} in the same run", ""]
    out.append(
        "Throughput ratios: higher is better. Latency ratios: lower is better (below 1 beats it)."
    )
    out += [
        "",
        "| system | submit | submit-only | end-to-end | p99 @100/s | p99 @500/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for system in systems:
        cells = [
            spread(figures.ratios(system, metric, BASELINE, metric), "{:.2f}")
            for metric in (SUBMIT, SUBMIT_ONLY, E2E, P99_100, P99_500)
        ]
        out.append(f"| {system} | " + " | ".join(cells) + " |")

    out += ["", "## CPU per job in the throughput phase (ms)", ""]
    out.append(
        "CPU seconds each process used during the phase, over the jobs: the server (for RQ, "
        "Redis), the driver (for RQ, the worker) and the client (its reader thread included)."
    )
    out.append(
        "Then what was written per job: kB to the block device (machine-wide, /proc/diskstats), "
        "kB the server passed to write calls (wchar of /proc/PID/io), and for jobstore LMDB "
        "commits (checkpoints), batches journaled and flushes per job (README.md says how each "
        "is measured)."
    )
    written: list[tuple[str, Metric, str]] = [
        ("device kB/job", DEVICE, "{:.1f}"),
        ("wchar kB/job", WCHAR, "{:.1f}"),
        ("LMDB commits/job", COMMITS, "{:.3f}"),
        ("journaled/job", JOURNALED, "{:.3f}"),
        ("flushes/job", FLUSHES, "{:.3f}"),
    ]
    if any(figures.values(system, FOLIO_INFLATED) for system in systems):
        written.append(("write_bytes kB/job (folio-inflated)", FOLIO_INFLATED, "{:.1f}"))
    head = ["server", "driver", "client", *(name for name, _, _ in written)]
    out += ["", "| system | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for system in systems:
        cells = [spread(figures.values(system, cpu_per_job(who)), "{:.3f}") for who in WHO]
        cells += [spread(figures.values(system, metric), fmt) for _, metric, fmt in written]
        out.append(f"| {system} | " + " | ".join(cells) + " |")

    out += ["", "## Server memory at the end of each run (MB)", ""]
    out.append(
        "Peak is VmHWM. Of the RSS at the end, anon is the process's own memory and file is "
        "mapped files: shared libraries and, for jobstore, the pages of LMDB's data file it "
        "touched, which the kernel can drop."
    )
    out += ["", "| system | peak | at end | anon | file |", "|---|---:|---:|---:|---:|"]
    for system in systems:
        cells = [
            spread(figures.values(system, memory(key)), "{:.0f}")
            for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile")
        ]
        out.append(f"| {system} | " + " | ".join(cells) + " |")

    out += ["", "## Ceilings (same runs)", "", "| ceiling | requests/s |", "|---|---:|"]
    for ceiling in (ECHO, GROUP_COMMIT):
        out.append(f"| {ceiling} | {spread(figures.values(ceiling, req_s), '{:.0f}')} |")

    out += ["", "## Targets", "", "| target | measured (median, min-max) | met |", "|---|---|---|"]
    for text, values, ok in targets(figures):
        verdict = "-" if not values else ("yes" if ok(statistics.median(values)) else "**no**")
        out.append(f"| {text} | {spread(values, '{:.2f}')} | {verdict} |")
    return out


def targets(figures: Figures) -> list[tuple[str, list[float], Callable[[float], bool]]]:
    out: list[tuple[str, list[float], Callable[[float], bool]]] = [
        (
            f"end-to-end throughput ≥ 6x {BASELINE}",
            figures.ratios(NATIVE, E2E, BASELINE, E2E),
            lambda v: v >= 6,
        ),
        (
            f"jobstore-zest end-to-end throughput ≥ 1x {BASELINE}",
            figures.ratios("jobstore-zest", E2E, BASELINE, E2E),
            lambda v: v >= 1,
        ),
        (
            "pipelined submit throughput ≥ 0.30x the group-commit ceiling (submit-only phase)",
            figures.ratios(NATIVE, SUBMIT_ONLY, GROUP_COMMIT, req_s),
            lambda v: v >= 0.30,
        ),
        (
            "the same, measured while the driver works (throughput phase)",
            figures.ratios(NATIVE, SUBMIT, GROUP_COMMIT, req_s),
            lambda v: v >= 0.30,
        ),
        (
            f"p99 latency at 100 jobs/s ≤ {BASELINE}'s (ratio ≤ 1)",
            figures.ratios(NATIVE, P99_100, BASELINE, P99_100),
            lambda v: v <= 1,
        ),
    ]
    if figures.by_run(MILLION):
        out += [
            (
                "with 1,000,000 jobs stored: end-to-end throughput ≥ 0.80x the empty store's",
                figures.ratios(MILLION, E2E, NATIVE, E2E),
                lambda v: v >= 0.8,
            ),
            (
                f"with 1,000,000 jobs stored: server peak RSS ≤ {RSS_LIMIT_MB:.0f} MB (MB)",
                figures.values(MILLION, rss_mb),
                lambda v: v <= RSS_LIMIT_MB,
            ),
        ]
    return out


def chart(figures: Figures, path: Path) -> None:
    """Throughput (log scale) and latency percentiles per system, medians with min-max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s for s in figures.systems if not s.startswith(("ceiling-", "home-"))]
    if not systems:
        return
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.5))
    panels: list[tuple[Any, str, list[tuple[str, Metric]], list[tuple[str, Metric]]]] = [
        (
            axes[0],
            "Throughput (jobs/s, log)",
            [("submit-only", SUBMIT_ONLY), ("submit", SUBMIT), ("end-to-end", E2E)],
            [("echo ceiling", req_s), ("group-commit ceiling", req_s)],
        ),
        (axes[1], "Latency at 100 jobs/s (ms, log)", [("p50", P50_100), ("p99", P99_100)], []),
        (axes[2], "Latency at 500 jobs/s (ms, log)", [("p50", P50_500), ("p99", P99_500)], []),
    ]
    for ax, title, series, lines in panels:
        width = 0.8 / len(series)
        for k, (label, metric) in enumerate(series):
            meds, lows, highs, xs = [], [], [], []
            for i, system in enumerate(systems):
                values = figures.values(system, metric)
                if not values:
                    continue
                med = statistics.median(values)
                xs.append(i + (k - (len(series) - 1) / 2) * width)
                meds.append(med)
                lows.append(med - min(values))
                highs.append(max(values) - med)
            ax.bar(xs, meds, width, yerr=[lows, highs], capsize=3, label=label)
        for (label, metric), ceiling, style in zip(
            lines, (ECHO, GROUP_COMMIT), ("--", ":"), strict=False
        ):
            values = figures.values(ceiling, metric)
            if values:
                ax.axhline(statistics.median(values), color="grey", linestyle=style, label=label)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xticks(range(len(systems)))
        ax.set_xticklabels(systems, rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("jobstore vs beanstalkd and RQ: medians over runs, bars min-max")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(lines_path: Path, out_dir: Path) -> str:
    """Write results.md and chart.png beside the JSON lines; return the Markdown."""
    figures = Figures(load(lines_path))
    text = render(figures)
    (out_dir / "results.md").write_text(text)
    chart(figures, out_dir / "chart.png")
    return text


if __name__ == "__main__":
    import sys

    here = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results"
    print(write(here / "runs.jsonl", here))
