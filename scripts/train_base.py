"""Train the `base` encoder shipped inside the package (`--init base`), and write its model card.

The base is a BYOL encoder pretrained by this project on public, unlabelled images only:
  - CIFAR-10's 50,000 training images (32 px), and
  - the training images of 5 Imagenette classes (n01440764, n02102040, n02979186, n03000684, n03028079).
The other 5 Imagenette classes are never seen: they stand for "a user's folder" when the quality benchmark
(`scripts/bench_quality.py`) measures what a warm start is worth on photos the base has never met.
Labels are never read (class folders only organise the files).

    python scripts/train_base.py --budget 60m            # train (resumes by itself after a stop)
    python scripts/train_base.py --budget 60m --ship     # ...then write byol/weights/ (encoder + card)
    python scripts/train_base.py --ship                  # only ship the finished run
    python scripts/train_base.py --budget 2h --continue-from byol/weights/base-resnet-tiny.pt --out .cache/base-2
    python scripts/train_base.py --budget 60m --photo-repeats 5 --continue-from byol/weights/base-resnet-tiny.pt \
        --out .cache/base-5                              # the photos seen 5x as often as CIFAR-10's images

The run lives in --out (default .cache/base-run); rerunning the same command after an interruption resumes it
exactly. Training it longer, or on a GPU, is a new run with `--continue-from` the shipped encoder.
Needs ../shared/datasets/ (cifar10-jpg.tar.gz and imagenette-224.tar.gz) beside the checkout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_pretrain import CACHE, DATASETS, extract_once  # noqa: E402

SEEN_IMAGENETTE = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079")
HELD_OUT_IMAGENETTE = ("n03394916", "n03417042", "n03425413", "n03445777", "n03888257")


def base_folder(photo_repeats: int = 1) -> Path:
    """A folder of links: CIFAR-10 train (all) + Imagenette train of the 5 seen classes, each photo folder linked
    photo_repeats times (so that the 4,710 photos weigh more beside CIFAR-10's 50,000 small images). Made once."""
    cifar = extract_once(DATASETS / "cifar10-jpg.tar.gz", CACHE / "cifar10")
    nette = extract_once(DATASETS / "imagenette-224.tar.gz", CACHE / "imagenette")
    dest = CACHE / ("base-data" if photo_repeats == 1 else f"base-data-photos{photo_repeats}")
    if dest.is_dir():
        return dest
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for cls in sorted((cifar / "train").iterdir()):
        link = tmp / f"cifar10-{cls.name}"
        if not link.exists():
            link.symlink_to(cls.resolve())
    for wnid in SEEN_IMAGENETTE:
        photos = (nette / "train" / wnid).resolve()
        link = tmp / f"imagenette-{wnid}"
        if not link.exists():
            link.symlink_to(photos)
        for k in range(1, photo_repeats):  # links to the files (a folder linked twice is scanned once)
            again = tmp / f"imagenette-{wnid}-{k}"
            again.mkdir(exist_ok=True)
            for f in sorted(photos.iterdir()):
                if not (again / f.name).exists():
                    (again / f.name).symlink_to(f)
    os.rename(tmp, dest)
    return dest


def earlier_training(continue_from: str | None) -> dict:
    """What the base a continued run started from had behind it, from that base's card (beside its .pt):
    {"continues": {sha256, steps, command, date}, "steps_before": N}; {} for a run from scratch."""
    if not continue_from:
        return {}
    card_path = Path(continue_from).with_suffix(".json")
    if not card_path.is_file():
        return {"continues": {"path": str(continue_from)}}
    old = json.loads(card_path.read_text())
    before = int(old.get("steps_before", 0)) + int(old.get("steps", 0))
    return {"continues": {k: old.get(k) for k in ("sha256", "steps", "command", "date")}, "steps_before": before}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default=None, help="training time, e.g. 60m (omit with --ship to only ship)")
    p.add_argument("--out", type=Path, default=CACHE / "base-run", help="run folder (resumable)")
    p.add_argument("--backbone", default="resnet-tiny")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--continue-from", default=None, help="--init for the run: an earlier base, to train it longer")
    p.add_argument("--ship", action="store_true", help="write byol/weights/ from the finished run")
    p.add_argument("--photo-repeats", type=int, default=1,
                   help="list each Imagenette photo this many times in the run's folder (default 1: 9%% of the "
                        "images are photos; 5: 32%%), so that an epoch shows the photos more often")
    args = p.parse_args()

    from byol.init import BASE_DIR, export_base
    from byol.train import TrainConfig, parse_duration, train

    if args.budget:
        ckpt = args.out / "checkpoint.pt"
        ended = any(json.loads(line).get("kind") == "end"
                    for line in (args.out / "log.jsonl").read_text().splitlines()) if ckpt.is_file() else False
        if ended:
            print(f"{args.out}: already finished; --ship writes it into the package", file=sys.stderr)
        else:
            cfg = TrainConfig(folder=str(base_folder(args.photo_repeats)), out=str(args.out),
                              budget=parse_duration(args.budget),
                              resume=ckpt.is_file(), init=args.continue_from or "none")
            cfg.model.backbone, cfg.model.image_size = args.backbone, args.image_size
            cfg.cache_dir = str(CACHE / (f"base-cache-{args.image_size}"
                                         + (f"-photos{args.photo_repeats}" if args.photo_repeats > 1 else "")))
            train(cfg)
    if args.ship:
        command = "python scripts/train_base.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        lineage = earlier_training(args.continue_from)  # read before export_base overwrites that card
        card = export_base(args.out / "checkpoint.pt", BASE_DIR, {
            "data": ("CIFAR-10 train (50,000 images, 32 px) + Imagenette train of classes "
                     + ", ".join(SEEN_IMAGENETTE) + " (224 px"
                     + (f", each photo listed {args.photo_repeats} times" if args.photo_repeats > 1 else "")
                     + "); labels never read. Imagenette classes "
                     + ", ".join(HELD_OUT_IMAGENETTE) + " held out for evaluation."),
            "command": command,
            "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
            "date": datetime.date.today().isoformat(),
            **lineage,
        })
        print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
