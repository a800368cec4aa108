#!/usr/bin/env bash
# Run a command beside one busy-looping CPU hog per core (how the suite is
# checked for timing-bound tests: `scripts/under_load.sh make test`).
# The hogs are ordinary processes at normal priority; they are killed when
# the command ends, whatever its outcome.
set -uo pipefail
hogs=()
for _ in $(seq "$(nproc)"); do
    python3 -c 'while True: pass' &
    hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
"$@"
