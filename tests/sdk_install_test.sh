#!/usr/bin/env bash
# As a stranger would: install Mango to a prefix, build the out-of-tree
# example plugin against the installed SDK only, and load it through
# MANGO_PLUGIN_PATH into the installed host.
set -eu
build=$1 example=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >/dev/null
start=$(date +%s.%N)
cmake -S "$example" -B "$work/example" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/example" >/dev/null
end=$(date +%s.%N)
echo "example plugin configured and built in $(echo "$end - $start" | bc) s"
lib=$(find "$work/example" -name '*.so' | head -1)
echo "built $lib"
if readelf -d "$lib" | grep NEEDED | grep -Eiq 'torch|c10'; then echo "example links LibTorch"; exit 1; fi
export MANGO_PLUGIN_PATH="$work/example"
"$work/prefix/bin/mango" plugins list | tee "$work/list.txt"
grep -Eq "router +hello +1.0.0" "$work/list.txt"
"$work/prefix/bin/mango" plugins validate "$work/example"
"$work/prefix/bin/mango" plugins info hello | grep -q "temperature"
echo "out-of-tree plugin ok"
