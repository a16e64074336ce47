"""The `byol-search` command: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.flags import AT_LEAST_ONE, INIT_HELP, add_config_flags, backbones, config_from_args

DESCRIPTION = """\
Learn an image encoder from your own photo folder with BYOL, index the folder with FAISS,
and search and label it in the browser.

Pipeline: pretrain -> export -> index -> serve (or `run` to do all four, `demo` to try it).
"""

if TYPE_CHECKING:
    from index.ray_engine import RayConfig

    _Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def _command(sub: _Sub, name: str, **kw: Any) -> argparse.ArgumentParser:
    """A subcommand whose description keeps its line breaks."""
    return sub.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def _add_evaluate(sub: _Sub) -> None:
    p = _command(
        sub,
        "evaluate",
        help="score a checkpoint's encoder, or the base, on a labelled folder (kNN, linear probe, few-shot)",
        description=(
            "Freeze the checkpoint's encoder, embed LABELLED_FOLDER with its evaluation transform and report\n"
            "weighted kNN top-1, linear-probe top-1 and few-shot top-1 of the linear probe and of the page's\n"
            "few-shot classifier (mean and spread over the same random draws). LABELLED_FOLDER holds\n"
            "train/<class>/* and test/<class>/* (val/ is accepted for test/). Class names come from the folders;\n"
            "files that cannot be read are skipped and listed."
        ),
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="checkpoint.pt written by `byol-search pretrain`, or where a run starts, untrained: base "
                        "(the shipped base encoder), imagenet (when in torch's cache or online), none (random "
                        "weights) or an encoder file that --init reads; compare the two to see what training "
                        "on the folder added")
    p.add_argument("folder", metavar="LABELLED_FOLDER", help="folder with train/<class>/ and test/<class>/")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--out", metavar="FILE", help="also write the JSON result to FILE (written atomically)")
    p.add_argument("--k", type=int, default=200,
                   help="neighbours for the weighted kNN (default 200, the field's protocol; lower it for tiny folders)")
    p.add_argument("--t", type=float, default=0.1, help="kNN temperature: votes weigh exp(cos/t) (default 0.1)")
    p.add_argument("--shots", default="1,5,10",
                   help="labelled images per class for the few-shot probe, comma-separated (default 1,5,10; '' for none)")
    p.add_argument("--draws", type=int, default=5, help="random draws averaged per few-shot setting (default 5)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="linear probe L2 penalty (default: the best of 1e-5, 1e-4, 1e-3 on held-out train images; "
                        "few-shot linear probes use 1e-4; the few-shot classifier sets its own)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="images per forward pass (default 256; lower it if memory is short)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available, else cpu)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="encoder arithmetic (default auto: bfloat16 on CUDA and on CPUs with native bfloat16, "
                        "2-3x faster with the same scores; fp32 for exact reference numbers)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: one per core)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    try:
        shots = tuple(int(s) for s in args.shots.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--shots {args.shots!r}: expected comma-separated whole numbers, e.g. 1,5,10") from None
    if any(n < 1 for n in shots) or args.draws < 1 or args.k < 1 or args.t <= 0 or args.batch_size < 1:
        raise UsageError("--shots, --draws, --k and --batch-size must be positive, --t above 0")

    import torch

    from byol.evaluate import evaluate, format_table
    from byol.fileio import atomic_write_bytes

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # a missing/invalid checkpoint (CheckpointError) or a bad folder layout: ValueError, reported by main()
    result = evaluate(args.checkpoint, args.folder, knn_k=args.k, knn_t=args.t, shots=shots,
                      draws=args.draws, batch_size=args.batch_size, device=device, workers=args.workers,
                      weight_decay=args.weight_decay, precision=args.precision)
    text = json.dumps(result, indent=2)
    if args.out:
        atomic_write_bytes(args.out, text + "\n")
    print(text if args.json else format_table(result))
    return 0


PRETRAIN_EPILOG = """\
examples:
  byol-search pretrain ~/Pictures --out runs/photos --budget 20m
  byol-search pretrain ~/Pictures --out runs/photos --preview        # look at the augmentations first
  byol-search pretrain --out runs/photos --resume                    # continue after Ctrl-C or a crash
  byol-search pretrain data/cifar10/train --out runs/c10 --budget 15m --eval-folder data/cifar10

RUN_DIR receives checkpoint.pt, log.jsonl, bad_files.jsonl, curves.png and cache/ (decoded images).
Several GPUs or machines: torchrun --nproc_per_node N -m app.cli pretrain ... (DistributedDataParallel).
"""


def _add_pretrain(sub: _Sub) -> None:
    p = _command(
        sub,
        "pretrain",
        help="learn an image encoder from a photo folder with BYOL (writes RUN_DIR/checkpoint.pt)",
        description=(
            "Self-supervised BYOL pretraining (Grill et al. 2020) on the photos of FOLDER (read recursively;\n"
            "unreadable files are skipped and listed in RUN_DIR/bad_files.jsonl). Photos are decoded once into\n"
            "a cache; each step draws the paper's two augmented views. Give a wall-clock --budget (the number\n"
            "of steps is planned so the learning-rate and target schedules finish in time) or a number of --steps."
        ),
        epilog=PRETRAIN_EPILOG,
    )
    p.add_argument("folder", metavar="FOLDER", nargs="?", help="photo folder (not needed with --hf or --resume)")
    # every other flag is a TrainConfig field: its comment in byol/train.py is its help (app/flags.py)
    add_config_flags(p, after={"resume": lambda g: g.add_argument(
        "--preview", action="store_true",
        help="write RUN_DIR/preview.png (images and their two augmented views) and exit without training")})
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _check_pretrain_args(args, out)
    from byol.train import TrainConfig, parse_duration, preview, train

    budget = 0.0
    if args.steps is None:
        budget = parse_duration(args.budget or "20m")  # ValueError: a bad TIME, reported by main()
    elif args.budget:
        raise UsageError("give --budget or --steps, not both")
    cfg = TrainConfig(folder=args.folder, out=str(out), steps=args.steps or 0, budget=budget)
    config_from_args(args, cfg)
    if args.preview:
        print(f"wrote {preview(cfg)}")
        return 0
    path = train(cfg)  # bad input (folder, dataset, checkpoint, budget): ValueError or OSError, see main()
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the first process reports
        print(f"wrote {path}; log {out / 'log.jsonl'}, curves {out / 'curves.png'}")
    return 0


def _check_pretrain_args(args: argparse.Namespace, out: Path) -> None:
    """Mistakes found before any work starts (UsageError)."""
    if args.resume:
        if not (out / "checkpoint.pt").is_file():
            raise UsageError(f"--resume: no checkpoint in {out} (expected {out / 'checkpoint.pt'}); "
                             "start a run without --resume")
    elif args.hf is None:
        if args.folder is None:
            raise UsageError("give a photo FOLDER (or --hf NAME_OR_PATH)")
        if not Path(args.folder).is_dir():
            raise UsageError(f"{args.folder}: no such folder")
    if args.steps is not None and args.steps < 1:
        raise UsageError("--steps must be at least 1")
    for name in (n.split(".")[-1] for n in AT_LEAST_ONE):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.eval_folder and not Path(args.eval_folder).is_dir():
        raise UsageError(f"--eval-folder {args.eval_folder}: no such folder")


def _add_export(sub: _Sub) -> None:
    p = _command(
        sub,
        "export",
        help="turn a checkpoint's encoder into a portable ONNX model (optionally int8)",
        description=(
            "Export the checkpoint's online encoder to ONNX: L2-normalised embeddings, a dynamic batch axis,\n"
            "and the preprocessing (size, resize rule, mean/std), embedding size, checkpoint hash and training\n"
            "config in the model's metadata. The export checks itself against torch on images (batches 1, 7\n"
            "and 64: max abs difference <= 1e-4, cosine >= 0.9999) and writes nothing when they disagree."
        ),
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint.pt written by `byol-search pretrain`")
    p.add_argument("-o", "--out", default="encoder.onnx", help="where to write the model (default encoder.onnx)")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="also write an int8 model (<out>.int8.onnx): ~3x faster on CPUs with VNNI, and its cost in "
                        "retrieval quality (top-10 neighbour overlap with fp32) is measured and printed")
    p.add_argument("--check-folder", metavar="DIR", default=None,
                   help="photos for the parity check and the int8 calibration/overlap (default: generated images; "
                        "give your folder for figures that mean something)")
    p.add_argument("--labelled-folder", metavar="DIR", default=None,
                   help="with --quantize: a train/<class>/ test/<class>/ folder to report the kNN accuracy change")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18; onnxruntime >= 1.14 runs it)")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    import json

    from byol.export import export_onnx

    for name, d in (("--check-folder", args.check_folder), ("--labelled-folder", args.labelled_folder)):
        if d is not None and not Path(d).is_dir():
            raise UsageError(f"{name} {d}: no such folder")
    log = (lambda *a, **k: print(*a, **k, file=sys.stderr)) if args.json else print
    # ExportError (the parity check failed): exit 1; a missing/invalid checkpoint, a bad folder: 2 (main())
    report = export_onnx(args.checkpoint, args.out, opset=args.opset, quantize=args.quantize,
                         check_folder=args.check_folder, labelled_folder=args.labelled_folder, log=log)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"wrote {report['path']}" + (f" and {report['int8']['path']}" if "int8" in report else ""))
    return 0


def _add_index(sub: _Sub) -> None:
    p = _command(
        sub,
        "index",
        help="embed a photo folder into a searchable index (builds it, or updates it incrementally)",
        description=(
            "Embed every photo of FOLDER with the exported encoder and store the vectors (FAISS), the file\n"
            "details (SQLite) and thumbnails in INDEX_DIR. Run it again after the folder changes: new photos\n"
            "are added, changed ones re-embedded, deleted ones removed, moved ones followed, and unchanged\n"
            "ones never read. Unreadable files are listed in INDEX_DIR/bad_files.jsonl and skipped.\n"
            "Progress is saved every --save-every photos: an interrupted run resumes where it stopped."
        ),
    )
    p.add_argument("folder", metavar="FOLDER", help="the photo folder (searched recursively)")
    p.add_argument("--model", required=True, metavar="ENCODER.onnx", help="model written by `byol-search export`")
    p.add_argument("--out", required=True, metavar="INDEX_DIR", help="index folder (created when missing)")
    p.add_argument("--rebuild", action="store_true",
                   help="re-embed every photo (needed after exporting a new encoder; ids and labels are kept)")
    p.add_argument("--batch-size", type=int, default=64, help="photos per inference call (default 64)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: one per core)")
    p.add_argument("--save-every", type=int, default=5000,
                   help="save progress after this many embedded photos (default 5000; less often once saves "
                        "take long, as at millions of photos: saving stays under a tenth of the run)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_scale_options(p)
    p.set_defaults(func=_run_index)


def _add_scale_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("past one machine")
    g.add_argument("--memory-limit", metavar="SIZE", default=None,
                   help="memory the index may take, e.g. 4G, 512M (default: the index's own, 4G when new); "
                        "above it the index lives on disk: compressed codes searched memory-mapped, "
                        "re-ranked from float16 vectors")
    g.add_argument("--engine", choices=("local", "ray"), default=None,
                   help="where photos are embedded: local (default: this machine's cores) or ray (a Ray cluster: "
                        "shards decoded in CPU tasks and embedded by one encoder session per GPU, each finished "
                        "shard saved in INDEX_DIR/shards/ so a lost node or a kill costs only the shards in "
                        "flight; needs pip install 'byol-search[ray]' and the photos and encoder at the same "
                        "paths on every node)")
    g.add_argument("--ray-address", metavar="auto|HOST:PORT", default=None,
                   help="the Ray cluster to join (implies --engine ray): auto finds the one this machine is part "
                        "of (`ray start`), HOST:PORT names its head; default: a Ray started on this machine")


def _memory_limit(args: argparse.Namespace) -> int | None:
    """--memory-limit in bytes (None when not given): a number with an optional K, M, G or T suffix."""
    text = args.memory_limit
    if text is None:
        return None
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units and t[-1:] else ""
    try:
        value = float(t[:-1] if unit else t)
    except ValueError:
        raise UsageError(f"--memory-limit {text!r}: give a size such as 4G, 1.5G or 512M") from None
    if not value > 0 or value * units[unit] > 2**60:
        raise UsageError(f"--memory-limit {text!r}: the size must be positive")
    return int(value * units[unit])


def _ray_config(args: argparse.Namespace) -> RayConfig | None:
    """--engine / --ray-address as the Ray engine's config (None: the local engine)."""
    if args.engine == "local" and args.ray_address is not None:
        raise UsageError("--ray-address joins a Ray cluster: use it with --engine ray, not --engine local")
    if args.engine != "ray" and args.ray_address is None:
        return None
    from index.ray_engine import RayConfig  # imports no Ray: that waits until the engine runs

    return RayConfig(address=args.ray_address)


def _run_index(args: argparse.Namespace) -> int:
    import json

    from index.build import build_index

    if args.batch_size < 1 or args.save_every < 1 or (args.workers is not None and args.workers < 0):
        raise UsageError("--batch-size and --save-every must be positive, --workers 0 or more")
    log = (lambda *a, **k: print(*a, **k, file=sys.stderr)) if args.json else print
    memory_limit = _memory_limit(args)
    s = build_index(args.folder, args.model, args.out, batch_size=args.batch_size, workers=args.workers,
                    rebuild=args.rebuild, save_every=args.save_every, log=log, memory_limit=memory_limit,
                    ray=_ray_config(args))
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"{args.out}: {s['count']} photos ({s['index_type']} search) | {s['added']} added, {s['updated']} "
          f"re-embedded, {s['moved']} moved, {s['touched']} touched, {s['removed']} removed, {s['unchanged']} "
          f"unchanged, {s['bad']} unreadable | {s['embed_rate']:.0f} photos/s on {s['provider']}")
    for b in s["bad_files"][:10]:
        print(f"  unreadable: {b['path']}: {b['reason']}")
    if s["bad"] > 10:
        print(f"  ... and {s['bad'] - 10} more, listed in {Path(args.out) / 'bad_files.jsonl'}")
    return 0


def _add_search(sub: _Sub) -> None:
    p = sub.add_parser(
        "search",
        help="find the photos most like IMAGE in an index",
        description="Embed IMAGE with the index's encoder and print the k most similar photos (rank, cosine, path).",
    )
    p.add_argument("index_dir", metavar="INDEX_DIR", help="index folder written by `byol-search index`")
    p.add_argument("image", metavar="IMAGE", help="the query photo (any file; it need not be in the index)")
    p.add_argument("-k", type=int, default=10, help="how many results (default 10)")
    p.add_argument("--model", default=None, metavar="ENCODER.onnx",
                   help="the encoder, when it has moved since indexing (default: the one in the index's manifest)")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.set_defaults(func=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    import json

    from byol.data import display_path
    from index.embed import Embedder
    from index.store import Store

    if args.k < 1:
        raise UsageError("-k must be at least 1")
    store = Store.open(args.index_dir)
    model = args.model or store.model_path
    if not Path(model).is_file():
        raise UsageError(f"the index's encoder {model} is missing; point to it with --model ENCODER.onnx")
    embedder = Embedder(model)
    store.close()
    store = Store.open(args.index_dir, model_sha256=embedder.sha256)
    query = embedder.embed_file(args.image)  # BadImage: reported by main() with the file and the reason
    scores, ids = store.search(query, args.k)
    rows = {r["id"]: r for r in store.rows(ids[0])}
    results = [{"rank": n + 1, "cosine": round(float(s), 6), "id": int(i), "path": rows[i]["path"]}
               for n, (s, i) in enumerate((s, i) for s, i in zip(scores[0], ids[0]) if i in rows)]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['rank']:>4}  {r['cosine']:.4f}  {display_path(r['path'])}")
    return 0


def _add_duplicates(sub: _Sub) -> None:
    from index.duplicates import SIMILAR_COSINE

    p = _command(
        sub,
        "duplicates",
        help="list copies, bursts and similar photos in an index",
        description=(
            "Copies (identical files, and the same photo resized, re-encoded, cropped, rotated or converted) are\n"
            "found from the pixels: perceptual hashes made by `index`, each pair verified by a pixel comparison.\n"
            "Bursts are photos alike to the encoder whose EXIF times of capture are seconds apart (file dates never\n"
            "count); similar photos are alike to the encoder alone. Groups never chain (each photo is close to\n"
            "the group's chosen photo, listed first) and hold at most 12 photos. Nothing is deleted."
        ),
    )
    p.add_argument("index_dir", metavar="INDEX_DIR", help="index folder written by `byol-search index`")
    p.add_argument("--find", choices=("copies", "bursts", "similar"), default=None,
                   help="copies: copies only (default); bursts: copies and bursts; similar: copies, bursts and "
                        "similar photos")
    p.add_argument("--threshold", type=float, default=None,
                   help=f"the cosine of 'similar photos' (default {SIMILAR_COSINE}); given alone it means "
                        "--find similar at that cosine, as it did before --find")
    p.add_argument("--json", action="store_true", help="print groups (lists of {id, path, kind, reason, decision}) as JSON")
    p.set_defaults(func=_run_duplicates)


def _run_duplicates(args: argparse.Namespace) -> int:
    import json

    from app.review import Decisions, review_groups
    from byol.data import display_path
    from index.duplicates import SIMILAR_COSINE
    from index.photoinfo import PhotoInfoCache
    from index.store import Store

    if args.threshold is not None and not 0.5 <= args.threshold <= 1.0:
        raise UsageError("--threshold is a cosine similarity between 0.5 and 1")
    find = args.find or ("similar" if args.threshold is not None else "copies")
    level = {"copies": "copies", "bursts": "copies and bursts", "similar": "similar photos"}[find]
    cosine = SIMILAR_COSINE if args.threshold is None else args.threshold
    with Store.open(args.index_dir) as store, PhotoInfoCache(store) as infos:
        decisions = Decisions(store.index_dir)
        try:
            groups = review_groups(store, infos, decisions, level, cosine, max_groups=10**9)
        finally:
            decisions.close()
    out = [[{"id": m.id, "path": display_path(m.info.path), "kind": g.kind, "reason": m.reason,
             "decision": m.decision} for m in g.members] for g in groups]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for n, g in enumerate(out, 1):
        print(f"group {n}: {g[0]['kind']} ({len(g)} photos)")
        for r in g:
            print(f"  {r['path']}  ({r['reason']})")
    print(f"{len(out)} groups, {sum(len(g) for g in out)} photos: {level}"
          + (f" at cosine >= {cosine}" if level == "similar photos" else ""))
    return 0


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("serving")
    g.add_argument("--port", type=int, default=7860, help="port of the page (default 7860)")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for the network "
                        "needs a login: --auth-file, $BYOL_SEARCH_AUTH or --auth)")
    g.add_argument("--auth-file", metavar="FILE",
                   help="require the login user:password written in FILE (its first line); FILE must be readable "
                        "by you only (chmod 600 FILE). The login can also come from $BYOL_SEARCH_AUTH")
    g.add_argument("--auth", metavar="USER:PASSWORD",
                   help="require this login; the password is then visible to other users of this machine "
                        "(`ps`): prefer --auth-file or $BYOL_SEARCH_AUTH")
    g.add_argument("--allow-host", metavar="NAME", action="append", default=[],
                   help="also answer requests addressed to NAME (a DNS name of this machine, or a reverse proxy's); "
                        "by default only the --host address and 127.0.0.1/localhost/[::1] are answered, so other "
                        "web sites cannot reach the page. Repeat for several names")
    g.add_argument("--trusted-proxy", metavar="IP", action="append", default=[],
                   help="the address (or network, 10.0.0.0/8) of a reverse proxy in front of the page: only its "
                        "X-Forwarded-For header is believed, so that failed logins are counted per real client. "
                        "By default nobody's is: each connection's own address is the client. Repeat for several")


def _serve_index(index_dir: str, args: argparse.Namespace) -> int:
    """Open the page on INDEX_DIR until Ctrl-C; user mistakes become one-line errors (main())."""
    from app.files import check_bind, resolve_auth, trusted_proxies

    auth = resolve_auth(args.auth, args.auth_file)
    check_bind(args.host, auth)
    proxies = trusted_proxies(args.trusted_proxy)  # a bad address is refused before the page is built
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: give a port between 1 and 65535")
    if not (Path(index_dir) / "meta.sqlite").is_file():
        raise UsageError(f"{index_dir}: not an index; build one with "
                         f"`byol-search index FOLDER --model encoder.onnx --out {index_dir}`")
    from app.ui import build_app, launch

    # refuses an encoder that is not the index's (EncoderMismatch), or a gradio too old (ImportError)
    demo = build_app(index_dir)
    print(f"serving {index_dir} on http://{args.host}:{args.port} (Ctrl-C to stop)")
    try:
        launch(demo, index_dir, host=args.host, port=args.port, auth=auth, allow_hosts=args.allow_host,
               trusted_proxies=proxies)
    except OSError as e:  # the port is taken
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {e}; try another --port") from e
    return 0


def _add_serve(sub: _Sub) -> None:
    p = _command(
        sub,
        "serve",
        help="open the search and labelling page on an index",
        description=(
            "Serve the page for INDEX_DIR: search by photo or by clicking results, browse, find near-duplicates,\n"
            "label a few photos and let a linear probe label the rest, see the map of the collection, export the\n"
            "labels (CSV, ImageFolder, HF datasets). Labels live in INDEX_DIR/labels.sqlite and survive index\n"
            "updates. Only thumbnails are served; the page listens on 127.0.0.1 unless --host and --auth are given."
        ),
    )
    p.add_argument("index_dir", metavar="INDEX_DIR", help="index folder written by `byol-search index`")
    _add_serve_options(p)
    p.set_defaults(func=lambda args: _serve_index(args.index_dir, args))


def _add_run(sub: _Sub) -> None:
    p = _command(
        sub,
        "run",
        help="pretrain, export, index and serve a photo folder in one command",
        description=(
            "The whole pipeline on FOLDER, in WORK_DIR: pretrain within --budget, export the encoder to ONNX,\n"
            "index the folder, then serve the page. Run it again after adding photos: stages whose inputs have\n"
            "not changed are skipped (WORK_DIR/run.json records them), an interrupted pretraining resumes, and\n"
            "indexing only embeds new or changed photos. Your labels (WORK_DIR/index/labels.sqlite) are kept."
        ),
    )
    p.add_argument("folder", metavar="FOLDER", help="the photo folder (read recursively)")
    p.add_argument("--out", metavar="WORK_DIR", default="byol-work", help="working folder (default ./byol-work)")
    p.add_argument("--budget", metavar="TIME",
                   help="pretraining time, e.g. 90s, 20m, 1.5h (default 5m on a CPU, 15m with a GPU; more time, "
                        "better search: 20m+ for a few thousand photos)")
    p.add_argument("--backbone", default="resnet-tiny",
                   choices=backbones(),
                   help="encoder (default resnet-tiny for CPUs; resnet18 or larger want a GPU)")
    p.add_argument("--image-size", type=int, default=32,
                   help="training resolution in px (default 32; 64 or more for detailed photos with a GPU)")
    p.add_argument("--init", metavar="auto|none|base|imagenet|PATH", default="auto", help=INIT_HELP)
    p.add_argument("--no-serve", action="store_true", help="stop after indexing and print where things are")
    _add_scale_options(p)
    _add_serve_options(p)
    p.set_defaults(func=_run_run)


def _run_pipeline(call: Callable[[], dict[str, Any]], args: argparse.Namespace) -> int:
    from app.files import check_bind, resolve_auth

    if not args.no_serve:  # refuse an unsafe --host or a bad login before minutes of training, not after
        check_bind(args.host, resolve_auth(args.auth, args.auth_file))
    result = call()  # interrupted: 130 (run it again to continue); diverged: 1; bad input: 2 (main())
    print(f"\nphotos      {result['folder']} ({result['photos']})\ncheckpoint  {result['checkpoint']}\n"
          f"encoder     {result['model']}\nindex       {result['index_dir']}")
    print("stages      " + ", ".join(f"{k} {result[k]}" for k in ("pretrain", "export", "index")))
    if args.no_serve:
        print(f"\nopen the page with:  byol-search serve {result['index_dir']}")
        return 0
    return _serve_index(result["index_dir"], args)


def _run_run(args: argparse.Namespace) -> int:
    from app.pipeline import RunConfig, run

    budget = _duration("--budget", args.budget) if args.budget else 0.0
    if args.image_size < 8:
        raise UsageError("--image-size must be at least 8")
    cfg = RunConfig(folder=args.folder, out=args.out, budget=budget, backbone=args.backbone,
                    image_size=args.image_size, init=args.init, memory_limit=_memory_limit(args),
                    ray=_ray_config(args))
    return _run_pipeline(lambda: run(cfg), args)


def _add_demo(sub: _Sub) -> None:
    p = _command(
        sub,
        "demo",
        help="try it: draw a small example photo set, then pretrain, export, index and serve it",
        description=(
            "Draws 320 example photos of 8 kinds (sunsets, oceans, forests, night skies, brick walls, flower\n"
            "fields, checkerboards, stripes; nothing is downloaded) into OUT/photos and runs `byol-search run`\n"
            "on them with a short budget: the page is up within a few minutes. Then search by clicking a photo,\n"
            "label two or three photos of two kinds and press Train."
        ),
    )
    p.add_argument("--out", metavar="DIR", default="byol-demo", help="where everything goes (default ./byol-demo)")
    p.add_argument("--budget", metavar="TIME", default="60s",
                   help="pretraining time (default 60s; the whole demo takes about two minutes on a laptop CPU)")
    p.add_argument("--no-serve", action="store_true", help="stop after indexing and print where things are")
    _add_serve_options(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from app.demo import demo

    budget = _duration("--budget", args.budget)
    return _run_pipeline(lambda: demo(args.out, budget=budget), args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byol-search", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # subcommands register below, one function each
    _add_pretrain(sub)
    _add_evaluate(sub)
    _add_export(sub)
    _add_index(sub)
    _add_search(sub)
    _add_duplicates(sub)
    _add_serve(sub)
    _add_run(sub)
    _add_demo(sub)
    del sub
    return parser


class UsageError(ValueError):
    """A mistake in the command line, found by the command itself (exit status 2)."""


def _duration(flag: str, text: str) -> float:
    from byol.train import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from e


def _interrupted(e: BaseException, args: argparse.Namespace) -> str:
    if args.command in ("run", "demo"):
        return "\ninterrupted: run the same command again to continue where it stopped"
    interrupted = _error_type("byol.train:TrainingInterrupted")  # None while byol.train is not imported yet
    if args.command == "pretrain" and interrupted is not None and isinstance(e, interrupted):
        return f"\n{e} (byol-search pretrain --out {args.out} --resume)"
    return "interrupted"


def _bad_image(e: BaseException, args: argparse.Namespace) -> str:
    from byol.images import BadImage  # already imported: ERRORS matched it

    assert isinstance(e, BadImage)
    return f"error: {e.path}: {e.reason}"


# Every error a command reports, mapped once: (exception type, exit status, message). The first match wins.
# Types are named by "module:Name" and looked up only among the modules already imported: an exception from
# a module that was never imported cannot be raised, and `--help` imports no torch.
ERRORS: tuple[tuple[str, int, Callable[[BaseException, argparse.Namespace], str]], ...] = (
    ("byol.train:TrainingInterrupted", 130, _interrupted),  # Ctrl-C during training: the checkpoint is saved
    ("builtins:KeyboardInterrupt", 130, _interrupted),
    ("byol.train:TrainingDiverged", 1, lambda e, a: f"error: {e}"),  # the loss stayed non-finite
    ("byol.export:ExportError", 1, lambda e, a: f"error: {e}"),  # ONNX and torch disagree
    ("byol.images:BadImage", 2, _bad_image),  # a query photo we cannot read
    ("index.store:StoreError", 2, lambda e, a: f"error: {e}"),  # not an index, another encoder, locked
    ("index.ray_engine:RayEngineError", 2, lambda e, a: f"error: {e}"),  # no Ray, no cluster there, a shard failing
    # user mistakes: UsageError, bad TIME, checkpoint, folder, dataset, login; files missing or unreadable;
    # a gradio too old for the page
    ("builtins:ValueError", 2, lambda e, a: f"error: {e}"),
    ("builtins:OSError", 2, lambda e, a: f"error: {e}"),
    ("builtins:ImportError", 2, lambda e, a: f"error: {e}"),
)


def _error_type(name: str) -> type[BaseException] | None:
    module, attr = name.split(":")
    return getattr(sys.modules.get(module), attr, None)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing what is left at exit raises no second broken pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a file (tests capture it)
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader of the output went away (`| head`): stop quietly, as shell tools do
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped this way
    except BaseException as e:
        for name, status, message in ERRORS:
            kind = _error_type(name)
            if kind is not None and isinstance(e, kind):
                print(message(e, args), file=sys.stderr)
                return status
        raise


if __name__ == "__main__":
    sys.exit(main())
