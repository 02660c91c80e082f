#!/usr/bin/env bash
# expect.sh CODE REGEX COMMAND... — runs COMMAND; passes when it exits with
# CODE and its output (stdout + stderr) matches the extended REGEX.
set -u
code=$1 regex=$2
shift 2
out=$("$@" 2>&1)
rc=$?
printf '%s\n' "$out"
if [ "$rc" != "$code" ]; then echo "expect.sh: exit status $rc, expected $code" >&2; exit 1; fi
if ! grep -Eq -- "$regex" <<<"$out"; then echo "expect.sh: output does not match /$regex/" >&2; exit 1; fi
