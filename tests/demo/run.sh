#!/usr/bin/env bash
# `make demo`: seed a demo organization into the running backend, collect it into ./lake with
# guardlake, then query the lake with DuckDB. The Makefile starts and stops the backend.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PY:-.venv/bin/python}
lake=${DEMO_LAKE:-./lake}
regions=us-east-1,eu-west-1,ap-southeast-2
# The Makefile passes where cargo built it (./target, or $CARGO_TARGET_DIR).
guardlake=${GUARDLAKE_BIN:-./target/debug/guardlake}

echo "== Seeding the demo organization"
"$py" tests/seed.py --demo
"$py" tests/demo/alerts.py setup
rm -rf "$lake"
echo
echo "== guardlake run --output $lake --regions $regions --alerts-bus guardlake-demo"
status=0
GUARDLAKE_LOG=${GUARDLAKE_LOG:-error} "$guardlake" run --output "$lake" --regions "$regions" --alerts-bus guardlake-demo || status=$?
echo "(exit code $status: 0 all ok, 3 published with some targets failed, as seeded)"
[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || exit "$status"
echo "Events on the alerts bus (a first run alerts nothing as new; gaps and the digest):"
"$py" tests/demo/alerts.py show
echo
echo "== Alerts: a new Critical finding arrives, then the next run"
"$py" tests/demo/alerts.py change
GUARDLAKE_LOG=${GUARDLAKE_LOG:-error} "$guardlake" run --output "$lake" --regions "$regions" --alerts-bus guardlake-demo >/dev/null || true
"$py" tests/demo/alerts.py show
echo
echo "== The lake, queried with DuckDB"
"$py" tests/demo/query.py "$lake"
echo
echo "== guardlake coverage --output $lake --html $lake/coverage.html"
"$guardlake" coverage --output "$lake" --html "$lake/coverage.html"
echo "Open it in a browser: file://$(cd "$lake" && pwd)/coverage.html"
