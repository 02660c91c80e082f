#!/usr/bin/env bash
# The reliability probe, repeatable: kills during saves and during training,
# two saves to one folder at once, bad inputs, a crashing plugin. Prints one
# row per experiment (trials, passed, failed) and exits 1 when any failed.
#   probe.sh MANGO SOURCE_DIR WORK_DIR FIXTURE_PLUGIN_DIR [SAVE_KILLS] [TRAIN_KILLS]
# ctest runs it with a few trials; `tests/probe/probe.sh build/bin/mango . /tmp/probe
# build/tests/fixtures/contract 100 24` repeats the issue's full probe.
set -uo pipefail
mango=$(realpath "$1") src=$(realpath "$2") work=$3 fixtures=$(realpath "$4")
save_kills=${5:-6} train_kills=${6:-3}
rm -rf "$work" && mkdir -p "$work" && work=$(realpath "$work")
tok=$src/tests/golden/tokenizers/llama3_style/tokenizer.json
declare -A trials passed
row() { trials[$1]=$(( ${trials[$1]:-0} + 1 )); if [ "$2" = ok ]; then passed[$1]=$(( ${passed[$1]:-0} + 1 )); else echo "  $1: $2" >&2; fi; }
ms() { date +%s%3N; }
# Kill after a random delay in [0, $2) ms.
kill_later() { local pid=$1 max=$2; sleep "$(awk -v r=$RANDOM -v m="$max" 'BEGIN { printf "%.3f", (r / 32768) * m / 1000 }')"; kill -9 "$pid" 2>/dev/null; }
same_folder() { [ -d "$1" ] && [ -d "$2" ] && diff -rq "$1" "$2" >/dev/null 2>&1; }
leftovers() { find "$1" -maxdepth 1 \( -name '*.mango-tmp-*' -o -name '*.mango-old-*' \) | wc -l; }

# A 16M-parameter LLaMA from its config (a save takes a noticeable time).
mkdir -p "$work/cfg"
cat > "$work/cfg/config.json" <<'EOF'
{"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 2,
 "intermediate_size": 1024, "vocab_size": 1500, "max_position_embeddings": 256, "tie_word_embeddings": false}
EOF
save_toml() {  # seed, target
  printf 'output = "%s"\n[tokenizer]\npath = "%s"\n[models.m]\nconfig = "%s"\nseed = %s\n[[steps]]\nrun = "save"\nmodel = "m"\npath = "%s"\n' \
    "$work/out" "$tok" "$work/cfg" "$1" "$2"
}
save_toml 1 "$work/ref_a" > "$work/save_a.toml"
save_toml 2 "$work/ref_b" > "$work/save_b.toml"
"$mango" run "$work/save_a.toml" --no-progress >/dev/null && "$mango" run "$work/save_b.toml" --no-progress >/dev/null ||
  { echo "probe: reference saves failed" >&2; exit 1; }

# 1. Kill during save: the folder is the old save or the new one, whole; later saves leave no temp files.
save_toml 1 "$work/saves/t" > "$work/to_a.toml"
save_toml 2 "$work/saves/t" > "$work/to_b.toml"
"$mango" run "$work/to_a.toml" --no-progress >/dev/null
t0=$(ms); "$mango" run "$work/to_b.toml" --no-progress >/dev/null; span=$(( $(ms) - t0 + 200 ))
for ((i = 0; i < save_kills; i++)); do
  if ((i % 2)); then next=to_a; else next=to_b; fi
  "$mango" run "$work/$next.toml" --no-progress >/dev/null 2>&1 & pid=$!
  kill_later $pid $span; wait $pid 2>/dev/null
  if same_folder "$work/saves/t" "$work/ref_a" || same_folder "$work/saves/t" "$work/ref_b"; then row save_kill ok
  else row save_kill "trial $i: the folder is neither save whole"; cp -r "$work/saves/t" "$work/broken_$i" 2>/dev/null; fi
done
"$mango" run "$work/to_a.toml" --no-progress >/dev/null
if same_folder "$work/saves/t" "$work/ref_a" && [ "$(leftovers "$work/saves")" = 0 ]; then row save_cleanup ok
else row save_cleanup "temp files left after a completed save: $(leftovers "$work/saves")"; fi

# 2. Kill during training: the rerun resumes and ends bit-exactly where an uninterrupted run does.
for i in $(seq 1 40); do cat "$src/configs/data/notes.txt"; echo; done > "$work/text.txt"
train_toml() {  # output
  cat <<EOF
output = "$1"
[tokenizer]
path = "$tok"
[data.d]
path = "$work/text.txt"
seq_len = 32
[models.m]
config = "$work/cfg_small"
seed = 3
[[steps]]
run = "train"
model = "m"
data = "d"
steps = 30
batch_size = 4
lr = 1e-3
save_state_every = 1
EOF
}
mkdir -p "$work/cfg_small"
cat > "$work/cfg_small/config.json" <<'EOF'
{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "intermediate_size": 128, "vocab_size": 1500, "max_position_embeddings": 256}
EOF
train_toml "$work/train_ref" > "$work/train_ref.toml"
t0=$(ms); "$mango" run "$work/train_ref.toml" --no-progress >/dev/null || { echo "probe: reference training failed" >&2; exit 1; }
span=$(( $(ms) - t0 ))
ref_lines=$(wc -l < "$work/train_ref/train/step0-m.metrics.jsonl")
for ((i = 0; i < train_kills; i++)); do
  out="$work/train_$i"
  train_toml "$out" > "$out.toml"
  "$mango" run "$out.toml" --no-progress >/dev/null 2>&1 & pid=$!
  kill_later $pid $span; wait $pid 2>/dev/null
  "$mango" run "$out.toml" --no-progress >/dev/null 2>&1
  lines=$(wc -l < "$out/train/step0-m.metrics.jsonl" 2>/dev/null || echo missing)
  if ! cmp -s "$out/models/m/model.safetensors" "$work/train_ref/models/m/model.safetensors"; then row train_kill "trial $i: resumed weights differ"
  elif [ "$lines" != "$ref_lines" ]; then row train_kill "trial $i: the metrics log has $lines lines, an uninterrupted run $ref_lines"
  elif [ "$(leftovers "$out/train")" != 0 ]; then row train_kill "trial $i: temp files left in $out/train"
  else row train_kill ok; fi
done

# 3. Two saves to one folder at once: one of them, whole; both succeed.
for ((i = 0; i < 3; i++)); do
  save_toml 1 "$work/both/t" > "$work/both_a.toml"; save_toml 2 "$work/both/t" > "$work/both_b.toml"
  "$mango" run "$work/both_a.toml" --no-progress >/dev/null 2>&1 & a=$!
  "$mango" run "$work/both_b.toml" --no-progress >/dev/null 2>&1 & b=$!
  wait $a; ra=$?; wait $b; rb=$?
  if [ $ra = 0 ] && [ $rb = 0 ] && { same_folder "$work/both/t" "$work/ref_a" || same_folder "$work/both/t" "$work/ref_b"; }; then row concurrent_save ok
  else row concurrent_save "exit $ra/$rb, or a mixed folder"; fi
done

# 4. Bad input: a clear error (exit status, message), never a crash.
expect() {  # name, status, regex, command...
  local name=$1 want=$2 re=$3; shift 3
  local out err; out=$("$@" 2>&1); local got=$?; err=$("$@" 2>&1 >/dev/null)
  if [ "$got" = "$want" ] && grep -qE "$re" <<<"$out" && [ ${#err} -lt 4000 ]; then row "bad_input" ok
  else row "bad_input" "$name: exit $got (want $want), ${#out} chars: $(head -c 300 <<<"$out")"; fi
}
mkdir -p "$work/bad_heads" && cp "$work/ref_a/"* "$work/bad_heads/"
sed -i 's/"num_attention_heads": 4/"num_attention_heads": 3/' "$work/bad_heads/config.json"
expect heads 1 "not a multiple" "$mango" inspect "$work/bad_heads"
mkdir -p "$work/bad_tok" && cp "$work/ref_a/"* "$work/bad_tok/"
python3 - "$work/bad_tok/tokenizer.json" <<'EOF' 2>/dev/null || sed -i 's/"merges": \[/"merges": ["zzqq zzqq", /' "$work/bad_tok/tokenizer.json"
import json, sys
j = json.load(open(sys.argv[1])); j["model"]["merges"].insert(0, "zzqq zzqq"); json.dump(j, open(sys.argv[1], "w"))
EOF
expect merge 1 "not in the vocabulary" "$mango" inspect "$work/bad_tok"
expect set 1 "no element has the key 'misspelt'" "$mango" run "$work/save_a.toml" --check --set 'steps.*.misspelt=1'
expect utf8 2 "not valid UTF-8" "$mango" tokenize "$work/ref_a" "$(printf 'abc\xff')"
expect length 2 "exceeds the model's 256 positions" "$mango" generate "$work/ref_a" --prompt hello --max-new-tokens 1000000000
mkdir -p "$work/huge" && sed 's/"vocab_size": 1500/"vocab_size": 1000000000000/' "$work/cfg/config.json" > "$work/huge/config.json"
save_toml 1 "$work/huge_out" | sed "s|$work/cfg|$work/huge|" > "$work/huge.toml"
expect vocab 1 "'vocab_size' = 1000000000000 is out of range .*at most 2147483647" "$mango" run "$work/huge.toml" --no-progress
sed -i 's/"vocab_size": 1000000000000/"vocab_size": 2000000000/' "$work/huge/config.json"  # in range, terabytes of weights
expect vocab_memory 1 "more than this machine's" "$mango" run "$work/huge.toml" --no-progress
printf 'output = "%s"\n[tokenizer]\npath = "%s"\neos = "%s"\n[[steps]]\nrun = "eval"\nmodels = ["a"]\ndata = ["b"]\n' \
  "$work/out" "$tok" "$(head -c 2000000 /dev/zero | tr '\0' x)" > "$work/eos.toml"
expect long_value 1 "characters" "$mango" run "$work/eos.toml" --check
head -c 1000 "$work/ref_a/model.safetensors" > "$work/trunc.safetensors"
expect truncated 1 "trunc.safetensors" "$mango" inspect "$work/trunc.safetensors"

# 5. A plugin that crashes: the process dies with the signal, naming the call and the library.
cat > "$work/crash.toml" <<EOF
output = "$work/crash_out"
[tokenizer]
path = "$tok"
[models.a]
path = "$work/ref_a"
[models.b]
path = "$work/ref_b"
[models.f]
fuse = ["a", "b"]
router = { name = "broken", options = { mode = "crash" } }
[[steps]]
run = "generate"
model = "f"
prompt = "hello"
max_new_tokens = 2
EOF
out=$("$mango" --plugin-path "$fixtures" run "$work/crash.toml" --no-progress 2>&1); got=$?
if [ $got = 139 ] && grep -q "router 'broken'" <<<"$out" && grep -q "fixture_contract.so" <<<"$out" && grep -q "while: step 1/1: generate" <<<"$out"; then
  row crashing_plugin ok
else row crashing_plugin "exit $got: $(tail -c 400 <<<"$out")"; fi

failed=0
printf '%-16s %7s %7s %7s\n' experiment trials passed failed
for k in save_kill save_cleanup train_kill concurrent_save bad_input crashing_plugin; do
  t=${trials[$k]:-0} p=${passed[$k]:-0}
  printf '%-16s %7d %7d %7d\n' "$k" "$t" "$p" $((t - p))
  failed=$((failed + t - p))
done
[ $failed = 0 ]
