"""Reliability figures for BENCHMARKS.md: the scenarios of tests/test_reliability.py at a larger size.

    .venv/bin/python scripts/bench_reliability.py [--kills-per-kind 15] [--clients 20] [--seconds 20]

Prints, with the goal of each:
  bad inputs tried / crashes                       (goal: 0 crashes, and every file read or reported)
  kills survived / artifacts lost                   (goal: 0 lost, of at least 50 kills: checkpoint, index,
                                                     labels and export saves, kill -9 at random moments)
  page errors while `index` saves beside N clients  (goal: 0)
  labels lost (and misplaced) over rebuilds         (goal: 0)
and, when tests/test_security.py is present, runs it and reports its result (hostile requests).
Nothing is downloaded: photos are generated, the encoder is an untrained export.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def encoders(root: Path) -> tuple[Path, Path]:
    """An untrained encoder exported to ONNX, and a second file of it (another encoder to the index)."""
    import onnx
    from checkpoints import make_checkpoint

    from byol.export import export_onnx

    ckpt = make_checkpoint(root / "checkpoint.pt")
    export_onnx(ckpt, root / "encoder.onnx", log=lambda *a: None)
    proto = onnx.load(str(root / "encoder.onnx"))
    proto.doc_string += " (another export)"
    onnx.save(proto, root / "other.onnx")
    return root / "encoder.onnx", root / "other.onnx"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills-per-kind", type=int, default=15, help="kills of each of 4 kinds of save (default 15)")
    ap.add_argument("--clients", type=int, default=20, help="concurrent page clients (default 20)")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long `index` saves beside them (default 20)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    import test_reliability as rel

    figures: dict = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0))}
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        root = Path(tmp)
        model, other = encoders(root)

        t0 = time.perf_counter()
        bad = rel.bad_input_run(root / "bad" / "photos", model, root / "bad")
        figures["bad_inputs"] = {"tried": bad["tried"], "crashes": bad["crashes"], "wrong": bad["wrong"],
                                 "seconds": round(time.perf_counter() - t0, 1)}

        t0 = time.perf_counter()
        kills = rel.run_kills(rel.KINDS, args.kills_per_kind, root / "kills", timeout=3600)
        figures["kills"] = {
            "kills": sum(k["kills"] for k in kills.values()), "saves_completed": sum(k["saves"] for k in kills.values()),
            "artifacts_lost": sum(len(k["problems"]) for k in kills.values()),
            "per_kind": {kind: {"kills": k["kills"], "lost": len(k["problems"])} for kind, k in kills.items()},
            "problems": [p for k in kills.values() for p in k["problems"]][:5],
            "seconds": round(time.perf_counter() - t0, 1)}

        page = rel.page_beside_index(root / "page", clients=args.clients, seconds=args.seconds)
        figures["page_beside_index"] = {"clients": args.clients, "seconds": args.seconds, **page}

        t0 = time.perf_counter()
        labels = rel.labels_over_rebuilds(root / "rebuilds", model, other)
        figures["labels_over_rebuilds"] = {**labels, "seconds": round(time.perf_counter() - t0, 1)}

    security = REPO / "tests" / "test_security.py"
    if security.is_file():
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(security)],
                              capture_output=True, text=True, cwd=REPO)
        figures["security_tests"] = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]

    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    k, p, lab = figures["kills"], figures["page_beside_index"], figures["labels_over_rebuilds"]
    b = figures["bad_inputs"]
    print(f"machine: {figures['cpu']}, {figures['cores']} cores; {figures['date']}")
    print(f"bad inputs tried / crashes:        {b['tried']} / {b['crashes']}"
          + (f"  (wrong outcomes: {b['wrong']})" if b["wrong"] else "  (each file read or reported)"))
    per = ", ".join(f"{kind} {v['kills']}" for kind, v in k["per_kind"].items())
    print(f"kills survived / artifacts lost:   {k['kills']} / {k['artifacts_lost']}  ({per}; "
          f"{k['saves_completed']} saves completed between kills)")
    print(f"page errors beside `index`:        {p['errors']} of {p['requests']} requests from {p['clients']} "
          f"clients, while `index` saved {p['saves']} generations in {p['seconds']:g} s"
          + (f"  (e.g. {p['examples']})" if p["errors"] else ""))
    print(f"labels lost / misplaced:           {lab['lost']} / {lab['misplaced']} over {lab['rebuilds']} rebuilds "
          f"of an index with {lab['labels']} labels")
    for step, lost, misplaced in lab["steps"]:
        print(f"    {step}: {lost} lost, {misplaced} misplaced")
    if "security_tests" in figures:
        print(f"hostile requests (tests/test_security.py): {figures['security_tests']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
