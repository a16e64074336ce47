"""The store's own paths, timed: add + save, single-query search, rows, vectors, a reader's refresh.

Runs the store of the code under --root (default: this checkout) in a fresh process per round, so two trees
(say, before and after a change) can be timed side by side on the same machine, alternating:

    .venv/bin/python scripts/bench_store.py --root OLD_TREE --root . --rounds 3

Prints the median of each figure per tree and the ratio of each tree to the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

_ROUND = r"""
import json, sys, tempfile, time
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
from index.store import Store
n, d, batch = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
x = rng.standard_normal((n, d)).astype(np.float32)
out = {}
with tempfile.TemporaryDirectory() as tmp:
    s = Store.create(Path(tmp) / "idx", d, "a" * 64, "/m.onnx", {"size": 64})
    t = time.perf_counter(); saves = 0.0
    for a in range(0, n, batch):
        s.add([{"path": f"/p/{i}.jpg", "size": i, "sha256": f"{i:064x}"} for i in range(a, a + batch)], x[a:a + batch])
        t1 = time.perf_counter(); s.save(); saves += time.perf_counter() - t1
    out["add_save_s"] = time.perf_counter() - t
    out["save_ms"] = 1000 * saves / (n // batch)
    r = Store.open(Path(tmp) / "idx")
    q = x[rng.integers(0, n, 2000)]
    t = time.perf_counter()
    for v in q:
        r.search(v, 10)
    out["search_ms"] = 1000 * (time.perf_counter() - t) / len(q)
    ids = r.all_ids()
    t = time.perf_counter()
    for _ in range(20):
        r.rows(ids[:5000])
    out["rows_5000_ms"] = 1000 * (time.perf_counter() - t) / 20
    t = time.perf_counter()
    for _ in range(20):
        r.get_vectors(ids[:5000])
    out["vectors_5000_ms"] = 1000 * (time.perf_counter() - t) / 20
    s.remove(ids[:100]); s.update(ids[100:200], [{"size": 1}] * 100); s.save()
    t = time.perf_counter(); r.refresh(); out["refresh_ms"] = 1000 * (time.perf_counter() - t)
    r.close(); s.close()
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", action="append", help="a tree whose index/store.py to time (repeat to compare)")
    ap.add_argument("--n", type=int, default=20_000, help="vectors added")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2_000, help="vectors added between saves")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per tree, alternating")
    args = ap.parse_args()
    roots = list(dict.fromkeys(str(Path(r).resolve()) for r in (args.root or ["."])))
    runs: dict[str, list[dict[str, float]]] = {r: [] for r in roots}
    for _ in range(args.rounds):
        for r in roots:
            res = subprocess.run([sys.executable, "-c", _ROUND, r, str(args.n), str(args.dim), str(args.batch)],
                                 capture_output=True, text=True, check=True)
            runs[r].append(json.loads(res.stdout))
    first = {k: statistics.median(x[k] for x in runs[roots[0]]) for k in runs[roots[0]][0]}
    for r in roots:
        med = {k: statistics.median(x[k] for x in runs[r]) for k in runs[r][0]}
        print(r)
        for k, v in med.items():
            print(f"  {k:22s} {v:10.3f}   x{v / first[k]:.3f}")


if __name__ == "__main__":
    main()
