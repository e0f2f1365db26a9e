"""Where the slow requests' time went, from a scheduler trace of CPU 0 (bench/tail.sh).

usage: python3 bench/tail.py TRACE WRITER

TRACE is `perf script -F comm,tid,time,event,trace` of a recording of CPU 0 with the events
sched:sched_switch, sched:sched_wakeup, syscalls:sys_{enter,exit}_fdatasync,
syscalls:sys_enter_writev and syscalls:sys_enter_recvfrom; WRITER names the thread that
writes and flushes the log (`cognihook-write` in the gateway, `bare-log` in the reference).

Prints:
- the core's time by thread (and idle: `swapper`);
- per request, from the async workers' system calls on each connection: *read wait* (the
  answer's `writev` to the first `recvfrom` of the next request on that connection: the
  client's turnaround, a few tens of µs, plus the wait until a worker reads it) and
  *service* (that first `recvfrom` to the answer's `writev`), as percentiles;
- the CPU each thread had during the lifetimes (read wait + service) of the median
  requests (p40-60 of the total), the slow ones (p90-99) and the slowest (top 1 %);
- the commit cycles (one log flush's end to the next's): their lengths and how many answers
  each carried, and the CPU each thread had in them, by quantile of cycle length;
- each thread's stretches of CPU (its runs less than 50 µs apart) over 0.3 ms and 1 ms, per
  second: a reference given a background thread's bursts of 1 ms twenty times a second had
  its p99 rise to 1.0–1.5× its own, the same work in bursts of 0.3 ms stayed at 0.9–1.1×
  (bench/README.md, sixty-first session);
- how long the writer and the workers waited for the core after being woken.

The trace's own cost raises every latency (both servers pay it): read shapes and shares
from it, not the ratio of p99s.
"""
import bisect
import collections
import re
import sys

LINE = re.compile(r"^\s*(.+?)\s+(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)$")
SWITCH = re.compile(r"prev_comm=(.*?) prev_pid=\d+ .*==> next_comm=(.*?) next_pid=\d+")
WAKE = re.compile(r"comm=(.*?) pid=\d+")
FD = re.compile(r"fd: (0x[0-9a-f]+)")
WORKER = "tokio-rt"


def group(comm, writer):
    """The thread names the report adds up, shortened."""
    if comm.startswith(writer[:15]):
        return "writer"
    for prefix, name in (
        (WORKER, "workers"),
        ("cognihook-proje", "projector"),
        ("cognihook-check", "checkpointer"),
        ("cognihook-keys", "keys-merge"),
        ("cognihook-audit", "audit"),
        ("bare-rounds", "background"),
        ("bare-bursts", "background"),
        ("kworker", "kworker"),
        ("swapper", "idle"),
    ):
        if comm.startswith(prefix):
            return name
    return "other"


def main():
    path, writer = sys.argv[1], sys.argv[2]
    runs = []  # (start, end, group) of every stretch a thread ran
    running, since = None, None
    flush_enter, flush_exit = [], []
    by_fd = collections.defaultdict(list)  # fd -> [(time, "r" | "w")]
    woken = {}
    waits = collections.defaultdict(list)
    first = last = None
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            comm, _tid, t, event, rest = m.groups()
            t = float(t)
            first = t if first is None else first
            last = t
            if event == "sched:sched_switch":
                s = SWITCH.search(rest)
                if not s:
                    continue
                if running is not None:
                    runs.append((since, t, group(running, writer)))
                running, since = s.group(2), t
                if running in woken:
                    waits[group(running, writer)].append((t - woken.pop(running)) * 1e6)
            elif event == "sched:sched_wakeup":
                w = WAKE.search(rest)
                if w:
                    woken.setdefault(w.group(1), t)
            elif event.endswith("fdatasync") and comm.startswith(writer[:15]):
                (flush_enter if "enter" in event else flush_exit).append(t)
            elif comm.startswith(WORKER) and event in (
                "syscalls:sys_enter_recvfrom",
                "syscalls:sys_enter_writev",
            ):
                fd = FD.search(rest)
                if fd:
                    by_fd[int(fd.group(1), 16)].append((t, "r" if "recv" in event else "w"))
    if not runs or last is None or first is None:
        sys.exit("no scheduler events in the trace")
    starts = [r[0] for r in runs]

    def cpu(a, b):
        """Microseconds each group ran within [a, b]."""
        out = collections.Counter()
        i = max(0, bisect.bisect_left(starts, a) - 1)
        while i < len(runs) and runs[i][0] < b:
            s, e, g = runs[i]
            overlap = min(e, b) - max(s, a)
            if overlap > 0:
                out[g] += overlap * 1e6
            i += 1
        return out

    def pct(values, ps=(0.1, 0.5, 0.75, 0.9, 0.99)):
        v = sorted(values)
        return " ".join(f"p{round(p * 100)} {v[min(len(v) - 1, int(len(v) * p))]:.0f}" for p in ps)

    def shares(counters, n):
        total = collections.Counter()
        for c in counters:
            total.update(c)
        order = ("workers", "writer", "projector", "keys-merge", "checkpointer", "audit",
                 "background", "kworker", "idle", "other")
        return "  ".join(f"{g} {total[g] / n:.0f}" for g in order if total[g] / n >= 1)

    span = last - first
    print(f"trace: {span:.2f} s of CPU 0; the core's time by thread:")
    whole = cpu(first, last)
    print("  " + "  ".join(f"{g} {v / span / 1e4:.1f} %" for g, v in whole.most_common()))

    requests = []  # (total, read wait, service, answered before, read at, answered at)
    for events in by_fd.values():
        answered, read = None, None
        for t, kind in events:
            if kind == "r":
                read = t if read is None else read
            else:
                if answered is not None and read is not None and read > answered:
                    requests.append((t - answered, read - answered, t - read, answered, read, t))
                answered, read = t, None
    if not requests:
        sys.exit("no request seen twice on a connection in the trace")
    requests.sort()
    n = len(requests)
    print(f"\nrequests: {n} on {len(by_fd)} connections (µs)")
    print("  read wait   " + pct([r[1] * 1e6 for r in requests]))
    print("  service     " + pct([r[2] * 1e6 for r in requests]))
    print("  both        " + pct([r[0] * 1e6 for r in requests]))
    print("CPU by thread during a request's life (µs, mean over the band, read wait + service):")
    for lo, hi, name in ((0.4, 0.6, "p40-60"), (0.9, 0.99, "p90-99"), (0.99, 1.0, "top 1 %")):
        band = requests[int(lo * n):max(int(hi * n), int(lo * n) + 1)]
        print(f"  {name:8} " + shares([cpu(r[3], r[5]) for r in band], len(band)))

    cycles = []  # (length, answers, cpu)
    answers = sorted(t for events in by_fd.values() for t, kind in events if kind == "w")
    for a, b in zip(flush_exit, flush_exit[1:]):
        count = bisect.bisect_left(answers, b) - bisect.bisect_left(answers, a)
        cycles.append(((b - a) * 1e6, count, cpu(a, b)))
    if cycles:
        cycles.sort(key=lambda c: c[0])
        m = len(cycles)
        print(f"\ncommit cycles (one flush's end to the next's): {m}; CPU by thread in them (µs):")
        for lo, hi, name in ((0, 0.25, "q1"), (0.25, 0.5, "q2"), (0.5, 0.75, "q3"),
                             (0.75, 0.9, "p75-90"), (0.9, 0.99, "p90-99"), (0.99, 1.0, "top 1 %")):
            band = cycles[int(lo * m):max(int(hi * m), int(lo * m) + 1)]
            length = sum(c[0] for c in band) / len(band)
            carried = sum(c[1] for c in band) / len(band)
            print(f"  {name:8} {length:6.0f} µs, {carried:5.1f} answers: "
                  + shares([c[2] for c in band], len(band)))
    print("\nstretches of CPU (a thread's runs less than 50 µs apart), per second of trace:")
    by_group = collections.defaultdict(list)
    for s, e, g in runs:
        by_group[g].append((s, e))
    for g in ("writer", "projector", "keys-merge", "checkpointer", "audit", "background",
              "kworker", "other"):
        stretches, start, end, busy = [], None, None, 0.0
        for s, e in by_group.get(g, []):
            if start is not None and s - end < 50e-6:
                end, busy = e, busy + (e - s)
                continue
            if start is not None:
                stretches.append(busy)
            start, end, busy = s, e, e - s
        if start is not None:
            stretches.append(busy)
        if stretches:
            over = [sum(1 for b in stretches if b > limit) / span for limit in (0.3e-3, 1e-3)]
            print(f"  {g:12} over 0.3 ms {over[0]:5.1f}/s, over 1 ms {over[1]:5.1f}/s, "
                  f"longest {max(stretches) * 1e6:5.0f} µs")
    print("\nwoken → running (µs):")
    for g in ("writer", "workers"):
        if len(waits[g]) >= 20:
            print(f"  {g:8} {len(waits[g]):6} wake-ups  " + pct(waits[g]))


if __name__ == "__main__":
    main()
