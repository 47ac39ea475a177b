#!/usr/bin/env bash
# Stops the backend started by start.sh and waits until its process is gone.
set -uo pipefail
cd "$(dirname "$0")/../.."
port=${EMULATOR_PORT:-4599}
pidfile=${PIDFILE:-.emulator-$port.pid}
[ -f "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
if kill -0 "$pid" 2>/dev/null; then
  kill "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
fi
rm -f "$pidfile"
echo "Backend on 127.0.0.1:$port stopped"
