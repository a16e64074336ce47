"""Screen pretraining settings on CIFAR-10: each setting trains for the same wall-clock budget, then kNN top-1.

How the defaults were chosen: short runs of several settings one after the other (same cache, same machine),
each evaluated with the field's protocol (k=200, t=0.1, frozen encoder). Each line of output (and of
.cache/sweep/results.jsonl) is one setting: its overrides of TrainConfig, steps, images/s, kNN and linear top-1.

    .venv/bin/python scripts/sweep_pretrain.py --budget 5m \\
        --setting 'bs256={"batch_size": 256}' --setting 'bs64={"batch_size": 64}' \\
        --setting 'bs128_crop02={"batch_size": 128, "augment": {"crop_scale": [0.2, 1.0]}}'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_pretrain import (  # noqa: E402
    CACHE,
    DATASETS,
    build_cache,
    extract_once,
    knn_of_checkpoint,
    parse_duration,
    run_ours,
)

from byol.train import TrainConfig  # noqa: E402


def setting(text: str) -> tuple[str, dict]:
    name, _, overrides = text.partition("=")
    try:
        return name, json.loads(overrides or "{}")
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: NAME=JSON expected ({e})") from e


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=parse_duration, default=parse_duration("5m"), help="per setting (default 5m)")
    p.add_argument("--setting", type=setting, action="append", required=True, metavar="NAME=JSON",
                   help="TrainConfig overrides, e.g. 'bs64={\"batch_size\": 64}' (repeat for each setting)")
    args = p.parse_args()

    cifar = extract_once(DATASETS / "cifar10-jpg.tar.gz", CACHE / "cifar10")
    work = CACHE / "sweep"
    build_cache(cifar / "train", work / "cache", 32)  # decoded once, outside every budget
    for name, overrides in args.setting:
        over = dict(overrides)
        # nested settings are rebuilt the way a checkpoint's config is (lists back to tuples)
        base = TrainConfig.from_dict({k: over.pop(k) for k in ("model", "augment") if k in over})
        over.update(model=base.model, augment=base.augment)
        run = run_ours(cifar / "train", work / f"run-{name}", budget=args.budget, cache_dir=str(work / "cache"),
                       progress=False, **over)
        ev = knn_of_checkpoint(run["checkpoint"], cifar)
        line = {"name": name, "budget_s": args.budget, "overrides": overrides,
                **{k: run[k] for k in ("steps", "images_per_s", "batch_size", "final_loss")},
                "knn_top1": ev["knn_top1"], "linear_top1": ev["linear_top1"]}
        print(json.dumps(line), flush=True)
        with open(work / "results.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
