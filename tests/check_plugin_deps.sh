#!/usr/bin/env bash
# Plugins build against the SDK only: no plugin library may need LibTorch.
set -eu
dir=$1
found=0
for lib in "$dir"/*.so; do
  found=1
  needed=$(readelf -d "$lib" | grep NEEDED || true)
  if grep -Eiq 'torch|c10' <<<"$needed"; then
    echo "FAIL $lib links LibTorch:"; echo "$needed"; exit 1
  fi
  echo "ok   $lib: $(grep -o '\[.*\]' <<<"$needed" | tr '\n' ' ')"
done
[ "$found" = 1 ] || { echo "no plugins in $dir"; exit 1; }
