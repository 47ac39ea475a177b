#!/usr/bin/env bash
# Starts the backend in the background, waits until it answers, records its pid.
set -euo pipefail
cd "$(dirname "$0")/../.."
port=${EMULATOR_PORT:-4599}
pidfile=${PIDFILE:-.emulator-$port.pid}
log=${LOG:-.emulator-$port.log}
py=${PY:-.venv/bin/python}
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "Backend already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
  exit 0
fi
started=$EPOCHREALTIME
(cd tests && exec "../$py" -m emulator --port "$port") >"$log" 2>&1 &
echo $! >"$pidfile"
for _ in $(seq 1 200); do
  if curl -fsS "http://127.0.0.1:$port/moto-api/ext/stats" >/dev/null 2>&1; then
    printf 'Backend ready on 127.0.0.1:%s (pid %s) in %.1f s\n' "$port" "$(cat "$pidfile")" "$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN{print b-a}')"
    exit 0
  fi
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "Backend exited during start-up; its log ($log):" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "Backend did not answer on 127.0.0.1:$port within 20 s; log: $log" >&2
exit 1
