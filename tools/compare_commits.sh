#!/usr/bin/env bash
# Side by side: tools/bench_core.py for two source trees, alternating, in one run.
# Usage: tools/compare_commits.sh OLD_TREE NEW_TREE [ROUNDS] [PYTHON]
# e.g.   git worktree add /tmp/old HEAD~5 && tools/compare_commits.sh /tmp/old . 3 .tox/docs/bin/python
# Prints each round's JSON line, then the medians per tree and the ratios new/old.
set -euo pipefail
old=$(cd "$1" && pwd); new=$(cd "$2" && pwd); rounds=${3:-3}; py=${4:-python}
bench=$(cd "$(dirname "$0")" && pwd)/bench_core.py
out=$(mktemp)
for i in $(seq "$rounds"); do
    for tree in "$old" "$new"; do
        echo "round $i: $tree" >&2
        (cd "$tree" && PYTHONPATH="$tree" "$py" "$bench") | tee -a "$out"
    done
done
"$py" - "$out" "$old" "$new" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
old, new = sys.argv[2], sys.argv[3]
keys = [k for k in rows[0] if k != "package"]
med = {tree: {k: statistics.median(r[k] for r in rows if r["package"].startswith(tree)) for k in keys}
       for tree in (old, new)}
print(f"{'figure':<16}{'old':>12}{'new':>12}{'new/old':>10}")
for k in keys:
    print(f"{k:<16}{med[old][k]:>12.1f}{med[new][k]:>12.1f}{med[new][k] / med[old][k]:>9.2f}x")
PY
