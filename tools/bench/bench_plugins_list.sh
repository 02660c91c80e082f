#!/usr/bin/env bash
# tools/bench/bench_plugins_list.sh [BUILD_DIR] [N] — `mango plugins list`
# with N (default 50) plugin libraries beside the shipped ones: the first,
# cold run scans each library in a child process; warm runs answer from the
# scan cache and load no plugin and no LibTorch. Prints milliseconds per run
# (median of 20 warm runs) against the 50 ms goal. gst-inspect-1.0 with its
# registry cache is the reference; it is timed too when installed.
set -euo pipefail
build=${1:-build}
n=${2:-50}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
clone=$build/tools/bench/libs/clone_plugin.so
[ -f "$clone" ] || { echo "build $clone first (cmake --build $build --target bench_clone_plugin)"; exit 1; }
mkdir -p "$work/plugins"
for i in $(seq -w 1 "$n"); do cp "$clone" "$work/plugins/clone$i.so"; done
export MANGO_CACHE_DIR=$work/cache MANGO_PLUGIN_PATH=$work/plugins
ms() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
cold=$(ms "$build/bin/mango" plugins list)
warm=$(for _ in $(seq 20); do ms "$build/bin/mango" plugins list; done | median)
count=$("$build/bin/mango" plugins list --json | grep -c '"kind"')
echo "mango plugins list, $count components ($n clone libraries + the shipped ones):"
echo "  cold (scans every library in a child process): ${cold} ms"
echo "  warm (scan cache):                             ${warm} ms  (goal < 50 ms: $([ "$warm" -lt 50 ] && echo met || echo MISSED))"
if command -v gst-inspect-1.0 >/dev/null; then
  gst=$(for _ in $(seq 20); do ms gst-inspect-1.0; done | median)
  echo "  gst-inspect-1.0 (warm registry), reference:    ${gst} ms"
fi
