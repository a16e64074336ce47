#!/usr/bin/env bash
# Images/s of the default pretraining run, an earlier commit against the working tree, alternating in one session
# (the machine's speed drifts: compare the means, never single runs).
#   scripts/ab_pretrain_speed.sh REV FOLDER [STEPS] [ROUNDS]
# e.g. scripts/ab_pretrain_speed.sh 09bfb25 .cache/heldout/photos 90 2
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REV=$1; FOLDER=$(realpath "$2"); STEPS=${3:-90}; ROUNDS=${4:-2}
PY="$ROOT/.venv/bin/python"
OLD=$(mktemp -d); WORK=$(mktemp -d)
trap 'git -C "$ROOT" worktree remove --force "$OLD" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
git -C "$ROOT" worktree add -f "$OLD" "$REV" >/dev/null 2>&1
for round in $(seq "$ROUNDS"); do
  for which in old new; do
    dir=$ROOT; [ "$which" = old ] && dir=$OLD
    out="$WORK/$which-$round"
    # compiled, as budget runs of 5 minutes and more train; each side keeps its own decoded cache
    (cd "$dir" && "$PY" -m app.cli pretrain "$FOLDER" --out "$out" --steps "$STEPS" --compile on \
       --cache-dir "$WORK/cache-$which" --no-progress >/dev/null 2>&1)
    "$PY" - "$out" "$which" <<'PY'
import json, sys
recs = [json.loads(line) for line in open(sys.argv[1] + "/log.jsonl")]
tr = [r for r in recs if r["kind"] == "train"][3:]  # past the compile
print(sys.argv[2], f"{sum(r['img_per_s'] for r in tr) / len(tr):.1f} images/s, steps {tr[0]['step']}-{tr[-1]['step']}")
PY
  done
done
