"""Does embedding photos larger than the encoder was trained at find better neighbours? (FixRes's question)

An encoder trained on random-resized crops meets objects larger than they look in a whole photo at the same
side (Touvron et al. 2019, "Fixing the train-test resolution discrepancy"), so the side at which the index
embeds a photo need not be the training image size. This evaluates the same checkpoints with whole photos at
several sides, through the evaluation transform (`byol.preprocess.Preprocess`) and `byol.evaluate`, on the
held-out protocol of scripts/bench_quality.py (its rows' checkpoints; run that first):

    python scripts/bench_test_size.py .cache/bench/quality/base-adapt_seed1/checkpoint.pt --sizes 32,40,48

Writes a markdown table to stdout and JSON to --out (default .cache/bench/test_size.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_pretrain import machine  # noqa: E402
from bench_quality import heldout_folders  # noqa: E402

from byol.checkpoint import load_encoder  # noqa: E402
from byol.evaluate import evaluate_encoder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="checkpoint.pt files (bench_quality.py rows)")
    ap.add_argument("--sizes", default="32,40,48", help="sides at which whole photos are embedded")
    ap.add_argument("--draws", type=int, default=10, help="few-shot draws per shot count")
    ap.add_argument("--out", default=str(ROOT / ".cache" / "bench" / "test_size.json"))
    args = ap.parse_args()
    _, labelled = heldout_folders()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "machine": machine(), "command": sys.argv, "rows": []}
    print("| checkpoint | trained at | embedded at | kNN | linear | 1-shot | 5-shot | 10-shot | 5-shot classifier |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in args.checkpoints:
        encoder, trained, _ = load_encoder(path)
        for side in sizes:
            # the same crop ratio as the training transform, at another side
            pre = replace(trained, size=side, resize=max(side, round(side * trained.resize / trained.size)))
            r = evaluate_encoder(encoder, pre, labelled, draws=args.draws, progress=False)
            fs = fc = r["few_shot"]  # the page's classifier is the logistic probe (byol.probe.fit_page)
            results["rows"].append({"checkpoint": str(path), "trained_size": trained.size, "size": side,
                                    "eval": r})
            print(f"| {Path(path).parent.name} | {trained.size} | {side} | {100 * r['knn_top1']:.1f} | "
                  f"{100 * r['linear_top1']:.1f} | {100 * fs['1']['mean']:.1f} | {100 * fs['5']['mean']:.1f} | "
                  f"{100 * fs['10']['mean']:.1f} | {100 * fc['5']['mean']:.1f} |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
