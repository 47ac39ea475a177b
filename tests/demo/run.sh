#!/usr/bin/env bash
# `make demo`: seed a demo organization into the running backend, collect it into ./lake with
# guardlake, then query the lake with DuckDB. The Makefile starts and stops the backend.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PY:-.venv/bin/python}
lake=${DEMO_LAKE:-./lake}
regions=us-east-1,eu-west-1,ap-southeast-2

echo "== Seeding the demo organization"
"$py" tests/seed.py --demo
rm -rf "$lake"
echo
echo "== guardlake run --output $lake --regions $regions"
status=0
GUARDLAKE_LOG=${GUARDLAKE_LOG:-error} ./target/debug/guardlake run --output "$lake" --regions "$regions" || status=$?
echo "(exit code $status: 0 all ok, 3 published with some targets failed, as seeded)"
[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || exit "$status"
echo
echo "== The lake, queried with DuckDB"
"$py" tests/demo/query.py "$lake"
echo
echo "== guardlake coverage --output $lake --html $lake/coverage.html"
./target/debug/guardlake coverage --output "$lake" --html "$lake/coverage.html"
echo "Open it in a browser: file://$(cd "$lake" && pwd)/coverage.html"
