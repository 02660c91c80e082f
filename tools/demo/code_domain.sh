#!/usr/bin/env bash
# A source-code domain from the npm package lodash (MIT license): every
# module file of the package (the one-function files, not the bundles) as one
# document of OUT_DIR/code.jsonl ({"text": ...} per line).
#   code_domain.sh LODASH_DIR OUT_DIR
set -euo pipefail
src=${1:?usage: code_domain.sh LODASH_DIR OUT_DIR}
out=${2:?usage: code_domain.sh LODASH_DIR OUT_DIR}
[[ -f $src/lodash.js ]] || { echo "code_domain.sh: $src is not the lodash package (no lodash.js)" >&2; exit 1; }
mkdir -p "$out"
node -e '
const fs = require("fs"), path = require("path");
const [src, out] = process.argv.slice(1);
const skip = new Set(["lodash.js", "lodash.min.js", "core.js", "core.min.js"]);
const files = fs.readdirSync(src).filter(f => f.endsWith(".js") && !skip.has(f)).sort();
const lines = files.map(f => JSON.stringify({text: fs.readFileSync(path.join(src, f), "utf8")}));
fs.writeFileSync(out + ".tmp", lines.join("\n") + "\n");
fs.renameSync(out + ".tmp", out);
console.log("code_domain.sh: " + files.length + " lodash modules in " + out);
' "$src" "$out/code.jsonl"
