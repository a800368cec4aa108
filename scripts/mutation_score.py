"""The mutation score of each mutated module, from mutmut's results: killed
(a test failed, or the mutant hung and timed out) over all its mutants
(survivors and mutants no test reaches count against it). Exits non-zero
when a module is below the bar (tests/MUTATION.md names the survivors)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict

BAR = 0.85
KILLED = {"killed", "timeout"}


def main() -> int:
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    tally: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    survivors: list[str] = []
    for line in out.splitlines():
        m = re.match(r"\s*(app\.[\w.]+?)\.x\S*?__mutmut_\d+: (.+)$", line)
        if not m:
            continue
        module, status = m.groups()
        tally[module][status] += 1
        if status not in KILLED:
            survivors.append(line.strip())
    if not tally:
        print("no mutmut results: run `mutmut run` first", file=sys.stderr)
        return 2
    low = []
    print(f"{'module':34} {'killed':>7} {'total':>6} {'score':>6}")
    for module in sorted(tally):
        counts = tally[module]
        total = sum(counts.values())
        killed = sum(counts[s] for s in KILLED)
        score = killed / total
        print(f"{module:34} {killed:7} {total:6} {score:6.1%}")
        if score < BAR:
            low.append(module)
    print(f"\n{len(survivors)} surviving mutants (each named in tests/MUTATION.md):")
    for line in survivors:
        print(f"  {line}")
    if low:
        print(f"\nbelow {BAR:.0%}: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
