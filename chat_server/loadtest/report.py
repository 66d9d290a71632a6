"""What a run found, as the one JSON object the command prints, and its exit status."""

from __future__ import annotations

import math
import os
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Config, keep_error
from .protocol import WorkerReady, WorkerResult
from .traffic import PostLog
from .worker import cpu_seconds

# Not clean when any of these is above zero: exit status 1.
FAILURES = ("streams_failed", "streams_ended_early", "posts_failed", "lost", "duplicated", "out_of_order")


@dataclass(frozen=True)
class ServerSample:
    """The server process and its workers as seen in /proc (on the same machine), at one moment."""

    at: float = field(default_factory=time.monotonic)
    rss_mb: float | None = None
    cpu_seconds: float | None = None


def sample_server(pid: int | None) -> ServerSample:
    """RSS and CPU of the process and its descendants (`run.py --workers N`: the workers)."""
    if pid is None:
        return ServerSample()
    pids = _tree(pid)
    rss = [_rss_mb(p) for p in pids]
    cpu = [_cpu_seconds(p) for p in pids]
    if rss[0] is None or cpu[0] is None:
        return ServerSample()
    return ServerSample(rss_mb=round(sum(r or 0.0 for r in rss), 1), cpu_seconds=sum(c or 0.0 for c in cpu))


def _tree(pid: int) -> list[int]:
    """The pid and its descendants, from /proc/PID/task/TID/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(c) for c in children.read().split())
        except (OSError, ValueError):
            continue
    return found


def _rss_mb(pid: int) -> float | None:
    """VmRSS from /proc/PID/status, in MiB; None when there is no such readable process."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime from /proc/PID/stat (fields 14 and 15, counted after the command's ')')."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class RunRecord:
    """Everything measured during one run, filled in as it goes."""

    cfg: Config
    run_id: str
    started: float = field(default_factory=time.time)
    cpu_at_start: float = field(default_factory=cpu_seconds)
    server_before: ServerSample = field(default_factory=ServerSample)
    server_after: ServerSample = field(default_factory=ServerSample)
    # Around the posting phase alone (first post sent to last post answered).
    server_posting: tuple[ServerSample, ServerSample] = (ServerSample(), ServerSample())
    chats: int = 0
    ready: list[WorkerReady] = field(default_factory=list)
    posts: PostLog = field(default_factory=PostLog)
    expected: int = 0
    drain_seconds: float = 0.0
    drained: bool = True
    workers: list[WorkerResult] = field(default_factory=list)


def percentiles(values: Sequence[float], points: Sequence[int]) -> dict[str, float | None]:
    """Nearest-rank percentiles and the maximum, in the unit of `values`, to 0.01."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for p in points:
        out[f"p{p}"] = round(ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1], 2) if ordered else None
    out["max"] = round(ordered[-1], 2) if ordered else None
    return out


def summarize(record: RunRecord) -> dict[str, Any]:
    cfg, posts, workers = record.cfg, record.posts, record.workers
    summary: dict[str, Any] = {
        "url": cfg.url,
        "run_id": record.run_id,
        "processes": cfg.processes,
        "cpus": os.cpu_count(),
        "chats": record.chats,
        "streams_requested": cfg.streams,
        "streams_connected": sum(sum(r.connected_by_chat.values()) for r in record.ready),
        "streams_failed": sum(r.failed for r in record.ready),
        "streams_ended_early": sum(w.ended_early for w in workers),
        "stream_reconnects": sum(w.reconnects for w in workers),
        "connect_seconds": _connect_seconds(record.ready),
        **_posting(cfg, posts),
        **_deliveries(record),
        **_server(record),
        **_own_cpu(record),
        "errors": _distinct([*posts.errors, *(e for w in workers for e in w.errors)]),
    }
    summary["ok"] = all(summary[key] == 0 for key in FAILURES)
    return summary


def _distinct(errors: list[str]) -> list[str]:
    kept: list[str] = []
    for error in errors:
        keep_error(kept, error)
    return kept


def exit_code(summary: dict[str, Any]) -> int:
    return 0 if summary["ok"] else 1


def _connect_seconds(ready: list[WorkerReady]) -> float | None:
    if not ready:
        return None
    return round(max(r.finished for r in ready) - min(r.started for r in ready), 3)


def _posting(cfg: Config, posts: PostLog) -> dict[str, Any]:
    window = (posts.finished_ns - posts.started_ns) / 1e9
    return {
        "messages_requested": cfg.messages,
        "messages_posted": posts.posted,
        "posts_failed": posts.failed,
        "post_rate_target": cfg.rate,
        "post_rate_actual": round(posts.posted / window, 2) if window > 0 else None,
        "post_latency_ms": percentiles(posts.latencies_ms, (50, 99)),
    }


def _deliveries(record: RunRecord) -> dict[str, Any]:
    workers = record.workers
    latencies: array[float] = array("d")
    for w in workers:
        latencies.frombytes(w.latencies_ms)
    received = sum(w.received for w in workers)
    last_ns = max((w.last_ns for w in workers if w.last_ns is not None), default=None)
    # From the first post to the last delivery.
    window = (last_ns - record.posts.started_ns) / 1e9 if last_ns is not None else 0.0
    return {
        "deliveries_expected": record.expected,
        "deliveries_received": received,
        "lost": sum(w.lost for w in workers),
        "duplicated": sum(w.duplicated for w in workers),
        "out_of_order": sum(w.out_of_order for w in workers),
        "unexpected": sum(w.unexpected for w in workers),
        "dropped_on_purpose": sum(w.dropped for w in workers),
        "delivery_latency_ms": percentiles(latencies, (50, 90, 99)),
        "deliveries_per_second": round(received / window, 1) if window > 0 else None,
        "drain_seconds": round(record.drain_seconds, 3),
        "drain_timed_out": not record.drained,
    }


def _server(record: RunRecord) -> dict[str, Any]:
    before, after = record.server_before, record.server_after
    cpu = percent = None
    if before.cpu_seconds is not None and after.cpu_seconds is not None:
        cpu = round(after.cpu_seconds - before.cpu_seconds, 2)
        percent = round(100 * cpu / (after.at - before.at), 1) if after.at > before.at else None
    first, last = record.server_posting
    per_post = None
    if first.cpu_seconds is not None and last.cpu_seconds is not None and record.posts.posted:
        per_post = round(1000 * (last.cpu_seconds - first.cpu_seconds) / record.posts.posted, 3)
    return {
        "server_pid": record.cfg.server_pid,
        "server_rss_before_mb": before.rss_mb,
        "server_rss_after_mb": after.rss_mb,
        "server_cpu_seconds": cpu,
        "server_cpu_percent": percent,
        "server_cpu_ms_per_post": per_post,
    }


def _own_cpu(record: RunRecord) -> dict[str, Any]:
    """This tool's CPU, all processes. The busiest process, while messages were posted and
    delivered, well under 100% (of one CPU) means the tool kept up."""
    wall = time.time() - record.started
    main_cpu = cpu_seconds() - record.cpu_at_start
    cpu = main_cpu + sum(w.cpu_seconds for w in record.workers)
    loads = [w.busy_cpu_seconds / w.busy_wall_seconds for w in record.workers if w.busy_wall_seconds > 0]
    busiest = max([main_cpu / wall, *loads])
    # What reading a message's deliveries cost the tool, on the cores the server shares: with
    # the server's own CPU per post, the least a fan-out can take on this machine.
    readers = sum(w.busy_cpu_seconds for w in record.workers)
    posted = record.posts.posted
    return {
        "loadtest_cpu_seconds": round(cpu, 2),
        "loadtest_cpu_percent_of_wall": round(100 * cpu / wall, 1),
        "loadtest_busiest_process_cpu_percent": round(100 * busiest, 1),
        "loadtest_reader_cpu_ms_per_post": round(1000 * readers / posted, 3) if posted else None,
        "wall_seconds": round(wall, 3),
    }
