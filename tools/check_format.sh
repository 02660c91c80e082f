#!/usr/bin/env bash
# tools/check_format.sh [--fix] — checks (or fixes) that every C and C++ file
# in the repository follows .clang-format. Exit 1 lists the files that do not.
# Needs clang-format (Debian: clang-format); without it, says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
fmt=$(command -v clang-format || command -v clang-format-14 || true)
if [ -z "$fmt" ]; then echo "check_format: clang-format not installed; skipped"; exit 0; fi
mapfile -t files < <(git ls-files '*.c' '*.h' '*.cpp' '*.hpp' 2>/dev/null || find . -name '*.[ch]pp' -o -name '*.[ch]')
if [ "${1:-}" = --fix ]; then "$fmt" --style=file -i "${files[@]}"; echo "formatted ${#files[@]} files"; exit 0; fi
bad=()
for f in "${files[@]}"; do
  "$fmt" --style=file --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ ${#bad[@]} -gt 0 ]; then
  printf 'not formatted (run tools/check_format.sh --fix):\n'; printf '  %s\n' "${bad[@]}"; exit 1
fi
echo "check_format: ${#files[@]} files follow .clang-format"
