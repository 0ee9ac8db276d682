#!/usr/bin/env bash
# Instructions per transition of the timer burst, counted by valgrind's callgrind: a figure that
# does not move with the load on a shared machine, where wall-clock rates of the same binary
# vary by a third from run to run. Counts the firing alone (both threads: the runtime's and
# SQLite's), not the enrolment before it nor the baseline after it.
#
#   bash worker/benches/instructions.sh [N]      # N families, default 6000 (six batches)
#
# Needs valgrind (apt-get install valgrind). Prints one line, to compare across commits.
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-6000}
bench=$(cargo bench -p carepath-worker --bench runtime --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "runtime" and m.get("executable"):
        print(m["executable"])')
out=$(mktemp -d)
trap 'kill "$vg" 2>/dev/null || true; rm -rf "$out"' EXIT
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/cg" \
    "$bench" --bench burst --n "$n" >"$out/stdout" 2>"$out/stderr" &
vg=$!
# The bench says "firing" before the burst and "fired" after it.
until grep -q "firing" "$out/stderr"; do sleep 0.2; kill -0 "$vg"; done
callgrind_control -i on "$vg" >/dev/null 2>&1
until grep -q "fired" "$out/stderr"; do sleep 0.05; kill -0 "$vg"; done
callgrind_control -i off "$vg" >/dev/null 2>&1
wait "$vg"
total=$(callgrind_annotate "$out/cg" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "burst of $n: $((total / n)) instructions per transition ($total in all)"
