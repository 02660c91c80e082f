#!/usr/bin/env bash
# tools/gpu_build.sh [BUILD_DIR] — build Mango against the machine's CUDA
# LibTorch (python3's torch). Dependencies the machine lacks come as Debian
# .debs in .debs/ (see README), unpacked into a private prefix, never into /.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
prefix=${MANGO_DEPS:-/tmp/mango-deps}
mkdir -p "$prefix"
for f in .debs/*.deb; do dpkg -x "$f" "$prefix"; done
torch=$(python3 -c "import torch; print(torch.utils.cmake_prefix_path)")
export PKG_CONFIG_PATH="$prefix/usr/lib/x86_64-linux-gnu/pkgconfig:$prefix/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$prefix"
export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
cmake -S . -B "$build" -DMANGO_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch;$prefix/usr;$prefix/usr/lib/x86_64-linux-gnu/cmake" \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DTORCH_CUDA_ARCH_LIST=9.0
cmake --build "$build" -j "$(nproc)"
echo "built $build; run with LD_LIBRARY_PATH=$prefix/usr/lib/x86_64-linux-gnu"
