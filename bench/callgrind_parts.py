"""Instructions per unit of work by part of the program, from `callgrind_annotate
--inclusive=yes` on stdin (used by bench/callgrind.sh and bench/store_callgrind.sh).

usage: python3 bench/callgrind_parts.py UNIT COUNT 'NAME=ROOT[|ROOT…]'…

Each part is the inclusive count of its root function (the outermost function of a thread or
task); where several are given, the first one found counts (the optimiser may inline one
into its caller). The rest of the program is "everything else".
"""
import re
import sys

unit, count = sys.argv[1], int(sys.argv[2])
parts = []
for spec in sys.argv[3:]:
    name, roots = spec.split("=", 1)
    parts.append((name, [r.strip() + " " for r in roots.split("|")]))
total, found = None, {}
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)", line)
    if not m:
        continue
    n, what = int(m.group(1).replace(",", "")), m.group(2)
    if "PROGRAM TOTALS" in what:
        total = n
    for name, roots in parts:
        for rank, root in enumerate(roots):
            if (name, rank) not in found and ":" + root in what + " ":
                found[(name, rank)] = n
if total is None or count <= 0:
    sys.exit("no callgrind totals, or nothing counted")
counted = {}
for name, roots in parts:
    counted[name] = next((found[(name, r)] for r in range(len(roots)) if (name, r) in found), 0)
label = f"instructions/{unit}"
print("%-32s %22s" % ("part", label))
for name, _ in parts:
    print("%-32s %22s" % (name, format(round(counted[name] / count), ",")))
rest = total - sum(counted.values())
print("%-32s %22s" % ("everything else", format(round(rest / count), ",")))
print("%-32s %22s" % ("total", format(round(total / count), ",")))
