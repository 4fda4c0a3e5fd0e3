#!/usr/bin/env bash
# The whole test suite: install dependencies, build, run unit, http and
# integration tests. Extra arguments go to `meson test` (e.g. --suite unit).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
[ -f build/build.ninja ] || meson setup build
meson compile -C build
rc=0
meson test -C build --print-errorlogs "$@" || rc=$?
# One plain closing line from meson's own log of this run.
python3 - <<'PY'
import json
counts = {"passed": 0, "failed": 0, "skipped": 0}
with open("build/meson-logs/testlog.json") as f:
    for line in f:
        result = json.loads(line).get("result", "")
        key = {"OK": "passed", "EXPECTEDFAIL": "passed", "SKIP": "skipped"}.get(result, "failed")
        counts[key] += 1
print(f"tests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
PY
exit "$rc"
