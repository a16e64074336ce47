"""What a user's encoder is worth on photos the project never trained on: from scratch, from each --init,
with and without 15 minutes of adaptation on the user's folder, and the few-shot classifiers compared.

Held-out protocol (the base encoder never saw these classes; see scripts/train_base.py):
  the user's folder   the training images of 5 Imagenette classes (n03394916 French horn, n03417042 garbage
                      truck, n03425413 gas pump, n03445777 golf ball, n03888257 parachute), labels ignored:
                      what `byol-search pretrain FOLDER --budget 15m [--init ...]` adapts on
  evaluation          `byol.evaluate` with those classes' train split as the kNN bank / few-shot pool and
                      their val split as the test: kNN (k=200, t=0.1), linear probe, 1/5/10-shot

Rows (one after the other, on the same machine; --rows picks some):
  random        untrained encoder (the floor)
  scratch       --init none + budget (with --extra-args: a variant, e.g. another --backbone)
  base          the shipped base encoder alone (no adaptation)
  base+adapt    --init base + budget
  imagenet      torchvision's ImageNet resnet18 alone, and + budget (only when its weights are in torch's
                cache: the benchmark never downloads)
  path+adapt    --init PATH (the scratch run's checkpoint) + budget: continuing an earlier run

    python scripts/bench_quality.py --budget 15m                    # ~40 minutes on 2 cores
    python scripts/bench_quality.py --budget 15m --rows base,base+adapt --extra-args="--warmup 0.1"
    python scripts/bench_quality.py --steps 202 --rows base+adapt --tag=_64prog \
        --extra-args="--image-size 64 --view-start 24 --view-stages 3"   # progressive resizing, equal compute
    python scripts/bench_quality.py --steps 613 --rows base,base+adapt --tag=_base2 \
        --base .cache/base-2/checkpoint.pt                           # a longer-trained base, before shipping it
    python scripts/bench_quality.py --steps 613 --rows base,base+adapt --tag=_small --per-class 272
                                                                     # a 1,360-photo folder

Writes a markdown table to stdout and JSON to --out (default .cache/bench/quality.json), with the exact
pretraining commands, machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_pretrain import CACHE, DATASETS, extract_once  # noqa: E402
from train_base import HELD_OUT_IMAGENETTE  # noqa: E402

ALL_ROWS = ("random", "scratch", "base", "base+adapt", "imagenet", "imagenet+adapt", "path+adapt")
DEFAULT_ROWS = ("random", "scratch", "base", "base+adapt")


def heldout_folders(per_class: int = 0) -> tuple[Path, Path]:
    """(photos: <wnid>/ links to the held-out train images, labelled: train/ and val/ links). Made once.

    per_class > 0: a smaller folder (a small collection, as a user's may be): the first per_class training
    photos of each class, by name, are both the folder `pretrain` adapts on and the kNN bank / few-shot pool;
    the test is still the whole val split."""
    nette = extract_once(DATASETS / "imagenette-224.tar.gz", CACHE / "imagenette")
    root = CACHE / ("heldout" if not per_class else f"heldout-{per_class}")
    photos, labelled = root / "photos", root / "labelled"
    for wnid in HELD_OUT_IMAGENETTE:
        train, val = nette / "train" / wnid, nette / "val" / wnid
        for link, target, keep in ((photos / wnid, train, per_class), (labelled / "train" / wnid, train, per_class),
                                   (labelled / "val" / wnid, val, 0)):
            if link.exists():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            if not keep:  # the whole class folder
                link.symlink_to(target.resolve())
                continue
            link.mkdir()
            for f in sorted(target.iterdir())[:keep]:
                (link / f.name).symlink_to(f.resolve())
    return photos, labelled


def untrained_checkpoint(path: Path, init: str, backbone: str = "resnet-tiny", image_size: int = 32) -> Path:
    """A step-0 checkpoint of the encoder a run would start from (random weights or an --init)."""
    import torch

    from byol.checkpoint import save_checkpoint
    from byol.init import resolve_init, start_from
    from byol.model import BYOL
    from byol.preprocess import Preprocess
    from byol.train import TrainConfig

    cfg = TrainConfig(init=init)
    cfg.model.backbone, cfg.model.image_size = backbone, image_size
    torch.manual_seed(cfg.seed)
    model = BYOL(cfg.model)
    info = start_from(model, resolve_init(init, backbone, image_size))
    save_checkpoint(path, {"config": asdict(cfg), "model_config": asdict(cfg.model),
                           "preprocess": Preprocess.for_size(image_size).to_dict(), "model": model.state_dict(),
                           "step": 0, "extra": {"init": info}})
    return path


def pretrain(photos: Path, out: Path, budget: str, init: str, extra: list[str],
             resume: bool = False) -> tuple[list[str], dict]:
    """`byol-search pretrain` as a user runs it (a fresh process: no compile cache shared between rows).
    resume: a run that `out` already holds is continued with `--resume` (a long row over several sittings),
    or only read when it has finished."""
    length = ["--steps", budget[len("steps="):]] if budget.startswith("steps=") else ["--budget", budget]
    exe = [str(ROOT / ".venv" / "bin" / "byol-search")]
    if not Path(exe[0]).exists():
        exe = [sys.executable, "-m", "app.cli"]
    cmd = [*exe, "pretrain", str(photos), "--out", str(out), *length,
           "--init", init, "--cache-dir", str(photos.parent / "cache-32"), "--no-progress",
           *extra]
    t0 = time.perf_counter()
    if not (resume and (out / "checkpoint.pt").is_file()):
        subprocess.run(cmd, check=True, cwd=ROOT)
    elif not _finished(out):
        subprocess.run([*exe, "pretrain", "--out", str(out), "--resume", "--no-progress"], check=True, cwd=ROOT)
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    trains = [r for r in recs if r["kind"] == "train"]
    steady = trains[len(trains) // 5:] or trains  # past the compile and the thread tuner's first choices
    end = next(r for r in recs if r["kind"] == "end")
    return cmd, {"seconds": time.perf_counter() - t0, "steps": end["step"], "compiled": end.get("compiled"),
                 "img_per_s": sum(r["img_per_s"] for r in steady) / len(steady)}


def _finished(out: Path) -> bool:
    log = out / "log.jsonl"
    return log.is_file() and any(json.loads(line)["kind"] == "end" for line in log.read_text().splitlines())


def imagenet_cached() -> bool:
    import torch
    import torchvision

    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="15m", help="adaptation budget per run (default 15m, what users run)")
    p.add_argument("--steps", type=int, default=0,
                   help="train this many steps instead of a budget: rows of equal compute on a machine that other "
                        "programs share (take the steps a budget run made alone, scaled by the step cost)")
    p.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma list of {', '.join(ALL_ROWS)}")
    p.add_argument("--resume", action="store_true",
                   help="continue the rows' runs that an earlier, interrupted call left (2-hour rows over several "
                        "sittings: pretrain saves on Ctrl-C or SIGTERM); finished runs are only evaluated")
    p.add_argument("--extra-args", default="", help="more `pretrain` options for the scratch and init+adapt rows")
    p.add_argument("--draws", type=int, default=10, help="few-shot draws per shot count (default 10)")
    p.add_argument("--work", type=Path, default=CACHE / "bench" / "quality")
    p.add_argument("--tag", default="", help="suffix of the run folders and JSON (to keep variants apart)")
    p.add_argument("--base", default="base",
                   help="the encoder of the base rows: 'base' (the shipped one) or a candidate's checkpoint.pt, "
                        "e.g. a longer scripts/train_base.py run, measured before it is shipped")
    p.add_argument("--per-class", type=int, default=0,
                   help="a small folder: only the first N training photos of each held-out class (default: all "
                        "4,759); the test stays the whole val split")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.steps:
        args.budget = f"steps={args.steps}"
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(rows) - set(ALL_ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ALL_ROWS)}")

    from byol.evaluate import evaluate

    photos, labelled = heldout_folders(args.per_class)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    extra = shlex.split(args.extra_args)
    result = {"command": " ".join(shlex.quote(a) for a in sys.argv), "date": datetime.datetime.now().isoformat(timespec="minutes"),
              "machine": {"platform": platform.platform(), "cpu": _cpu(), "cores": os.cpu_count()},
              "budget": args.budget, "folder": str(photos), "labelled": str(labelled), "rows": {}}
    out_json = args.out or CACHE / "bench" / f"quality{args.tag}.json"

    def record(name: str, ckpt: Path, cmd=None, run=None):
        t0 = time.perf_counter()
        r = evaluate(ckpt, labelled, draws=args.draws, progress=False)
        row = {"eval": r, "eval_seconds": time.perf_counter() - t0}
        if cmd:
            row.update(command=" ".join(shlex.quote(c) for c in cmd), run=run)
        result["rows"][name] = row
        print(f"{name}: kNN {r['knn_top1']:.1%}, linear {r.get('linear_top1', float('nan')):.1%}, "
              + ", ".join(f"{k}-shot {v['mean']:.1%}" for k, v in r["few_shot"].items())
              + (f"; {run['steps']} steps at {run['img_per_s']:.0f} img/s" if run else ""), file=sys.stderr, flush=True)
        from byol.checkpoint import atomic_write
        atomic_write(out_json, lambda f: f.write(json.dumps(result, indent=2, default=str).encode()))

    for name in rows:
        tag = name.replace("+", "-") + args.tag
        if name == "random":
            record(name, untrained_checkpoint(work / "random.pt", "none"))
        elif name == "base":
            record(name, untrained_checkpoint(work / f"base{args.tag}.pt", args.base))
        elif name.startswith("imagenet"):
            if not imagenet_cached():
                result["rows"][name] = {"skipped": "torchvision's ImageNet weights are not in torch's cache (offline)"}
                print(f"{name}: skipped (ImageNet weights not cached; this benchmark never downloads)", file=sys.stderr)
                continue
            if name == "imagenet":
                record(name, untrained_checkpoint(work / "imagenet.pt", "imagenet", "resnet18", 32))
            else:
                cmd, run = pretrain(photos, work / tag, args.budget, "imagenet", ["--backbone", "resnet18", *extra],
                                    args.resume)
                record(name, work / tag / "checkpoint.pt", cmd, run)
        elif name == "scratch":
            cmd, run = pretrain(photos, work / tag, args.budget, "none", extra, args.resume)
            record(name, work / tag / "checkpoint.pt", cmd, run)
        elif name == "base+adapt":
            cmd, run = pretrain(photos, work / tag, args.budget, args.base, extra, args.resume)
            record(name, work / tag / "checkpoint.pt", cmd, run)
        elif name == "path+adapt":
            init = work / f"scratch{args.tag}" / "checkpoint.pt"
            if not init.is_file():
                p.error("path+adapt continues the scratch row's run: run the scratch row first")
            cmd, run = pretrain(photos, work / tag, args.budget, str(init), extra, args.resume)
            record(name, work / tag / "checkpoint.pt", cmd, run)
    print(format_rows(result))
    print(f"\nJSON: {out_json}", file=sys.stderr)
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def format_rows(result: dict) -> str:
    """Markdown: one row per encoder; every few-shot classifier the evaluation reported, side by side."""
    lines = []
    rows = {k: v for k, v in result["rows"].items() if "eval" in v}
    if not rows:
        return "(no rows)"
    methods = [k for k in next(iter(rows.values()))["eval"] if k.startswith("few_shot")]
    shots = list(next(iter(rows.values()))["eval"]["few_shot"])
    head = ["encoder", "steps", "img/s", "kNN", "linear"] + [f"{n}-shot {m[len('few_shot'):].strip('_') or 'logistic'}"
                                                          for m in methods for n in shots]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for name, row in rows.items():
        r, run = row["eval"], row.get("run") or {}
        cells = [name, str(run.get("steps", 0)), f"{run['img_per_s']:.0f}" if run else "", f"{100 * r['knn_top1']:.1f}",
                 f"{100 * r.get('linear_top1', float('nan')):.1f}"]
        for m in methods:
            for n in shots:
                v = r[m].get(n) if isinstance(r[m], dict) else None
                cells.append(f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}" if isinstance(v, dict) else "")
        lines.append("| " + " | ".join(cells) + " |")
    skipped = {k: v["skipped"] for k, v in result["rows"].items() if "skipped" in v}
    lines += [f"\n{k}: not measured: {v}" for k, v in skipped.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
