#!/usr/bin/env python3
"""CPU time by process between two snapshots of /proc, for the benchmarks.

    cpu_by_process.py snap FILE                 # record every process's CPU time so far
    cpu_by_process.py diff BEFORE AFTER [N]     # CPU seconds per process group in between,
                                                # and per item when N items were served
    cpu_by_process.py brief BEFORE AFTER N      # the same as one line of µs per item
    cpu_by_process.py run FILE -- COMMAND...    # run COMMAND, write its CPU seconds to FILE

Processes are grouped by name (every Postgres backend is "postgres", RabbitMQ's Erlang VM is
"rabbitmq"), so the table says where a request's or a comment's CPU went on a machine where
everything shares the same cores. A process that started after BEFORE counts from zero; one
that ended before AFTER is not counted (so run the load generator's own process around the
snapshots, not inside them, and measure it with `run`).
"""

import json
import os
import resource
import subprocess
import sys

TICKS = os.sysconf("SC_CLK_TCK")
GROUPS = {
    "postgres": "postgres",
    "beam.smp": "rabbitmq",
    "erl_child_setup": "rabbitmq",
    "redis-server": "redis",
    "sentiment-worke": "sentiment-worker",  # the kernel keeps 15 characters of a name
}


def snapshot():
    seconds = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
        except OSError:
            continue  # gone meanwhile
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        # utime + stime; the start time tells a reused pid from the process that had it before.
        seconds[pid] = (name, (int(fields[11]) + int(fields[12])) / TICKS, fields[19])
    return seconds


def groups_between(before, after):
    groups = {}
    for pid, (name, t, started) in after.items():
        same = pid in before and before[pid][2] == started
        start = before[pid][1] if same else 0.0
        group = GROUPS.get(name, name)
        if group.startswith("kworker"):
            group = "kernel workers"
        groups[group] = groups.get(group, 0.0) + t - start
    return groups


def brief(before, after, items):
    groups = groups_between(before, after)
    total = sum(groups.values())
    parts = [f"{g} {t / items * 1e6:.0f}" for g, t in sorted(groups.items(), key=lambda kv: -kv[1])
             if t / items * 1e6 >= 1]
    print(f"µs of CPU per item: {', '.join(parts)} (all {total / items * 1e6:.0f})")


def diff(before, after, items):
    groups = groups_between(before, after)
    total = sum(groups.values())
    per = (lambda t: f" {t / items * 1e6:9.0f}") if items else (lambda t: "")
    print(f"| process | CPU s |{' µs per item |' if items else ''}")
    print(f"|---|---:|{'---:|' if items else ''}")
    for group, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        if t >= 0.05:
            print(f"| {group} | {t:.2f} |{per(t) + ' |' if items else ''}")
    print(f"| all | {total:.2f} |{per(total) + ' |' if items else ''}")


def run(out, command):
    """Runs `command` and records the CPU seconds it and its children used; returns its code."""
    code = subprocess.call(command)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out, "w") as f:
        f.write(f"{usage.ru_utime + usage.ru_stime:.3f}\n")
    return code


if __name__ == "__main__":
    if sys.argv[1] == "run":
        sys.exit(run(sys.argv[2], sys.argv[4:] if sys.argv[3] == "--" else sys.argv[3:]))
    if sys.argv[1] == "snap":
        with open(sys.argv[2], "w") as f:
            json.dump(snapshot(), f)
    else:
        with open(sys.argv[2]) as a, open(sys.argv[3]) as b:
            before, after = json.load(a), json.load(b)
        if sys.argv[1] == "brief":
            brief(before, after, float(sys.argv[4]))
        else:
            diff(before, after, float(sys.argv[4]) if len(sys.argv) > 4 else 0)
