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
echo "example plugin configured and built in $(awk "BEGIN { print $end - $start }") s"
lib=$(find "$work/example" -name '*.so' | head -1)
echo "built $lib"
if readelf -d "$lib" | grep NEEDED | grep -Eiq 'torch|c10'; then echo "example links LibTorch"; exit 1; fi
export MANGO_PLUGIN_PATH="$work/example"
"$work/prefix/bin/mango" plugins list | tee "$work/list.txt"
grep -Eq "router +hello +1.0.0" "$work/list.txt"
"$work/prefix/bin/mango" plugins validate "$work/example"
"$work/prefix/bin/mango" plugins info hello | grep -q "temperature"
"$work/prefix/bin/mango" plugins test hello
echo "out-of-tree plugin ok"

# The SDK documentation and examples are installed beside the headers; the
# plain C99 example builds from the installed copy and passes plugins test.
test -s "$work/prefix/share/doc/mango-sdk/README.md"
cmake -S "$work/prefix/share/doc/mango-sdk/examples/c_router" -B "$work/c_router" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/c_router" >/dev/null
MANGO_PLUGIN_PATH="$work/c_router" "$work/prefix/bin/mango" plugins test c_softmax --experts 4
echo "C99 example ok"

# Drop in an architecture: take gpt2 out of the installed host, see it refused
# by name, build the same plugin source out of tree against the installed SDK,
# and load it through MANGO_PLUGIN_PATH into the unchanged host.
src=$4 golden=$5 ascii=$6
rm "$work/prefix/lib/mango/plugins/mango_arch_gpt2.so"
set +e
out=$(MANGO_PLUGIN_PATH= "$work/prefix/bin/mango" generate "$golden/models/gpt2" --tokenizer "$ascii" --prompt Hi 2>&1)
rc=$?
set -e
echo "$out"
[ "$rc" = 1 ] && grep -q 'no architecture plugin handles model_type = "gpt2"' <<<"$out"
mkdir -p "$work/arch_gpt2"
cat > "$work/arch_gpt2/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.16)
project(arch_gpt2 LANGUAGES CXX)
find_package(MangoSDK REQUIRED)
mango_add_plugin(mango_arch_gpt2 $src/plugins/arch/gpt2/gpt2.cpp)
CMAKE
cmake -S "$work/arch_gpt2" -B "$work/arch_gpt2/build" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/arch_gpt2/build" >/dev/null
MANGO_PLUGIN_PATH="$work/arch_gpt2/build" "$work/prefix/bin/mango" generate "$golden/models/gpt2" --tokenizer "$ascii" \
  --prompt Hi --max-new-tokens 4 --json | tee "$work/gen.json"
grep -q '"new_tokens": 4' "$work/gen.json"
echo "dropped-in architecture ok"
