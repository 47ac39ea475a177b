#!/usr/bin/env bash
# Usage: check_glibc.sh BINARY MAX — fails when BINARY needs a glibc symbol version above MAX
# (Amazon Linux 2023, Lambda's provided.al2023, has glibc 2.34).
set -euo pipefail
bin=$1
max=$2
command -v objdump >/dev/null || { echo "check_glibc.sh: objdump (binutils) is needed" >&2; exit 2; }
versions=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/^GLIBC_//' | sort -uV)
[ -n "$versions" ] || { echo "$bin: no glibc symbol versions found (not dynamically linked?)" >&2; exit 1; }
newest=$(printf '%s\n' "$versions" | tail -1)
if [ "$(printf '%s\n%s\n' "$newest" "$max" | sort -V | tail -1)" != "$max" ]; then
  echo "$bin needs GLIBC_$newest, newer than $max; the symbols:" >&2
  for v in $versions; do
    if [ "$(printf '%s\n%s\n' "$v" "$max" | sort -V | tail -1)" != "$max" ]; then
      objdump -T "$bin" | grep -F "(GLIBC_$v)" | awk '{print "  " $NF " (GLIBC_'"$v"')"}' >&2
    fi
  done
  exit 1
fi
echo "$bin: newest glibc symbol version GLIBC_$newest (<= $max)"
