"""Reliability figures for BENCHMARKS.md: the scenarios of tests/test_reliability.py at a larger size.

    .venv/bin/python scripts/bench_reliability.py [--kills-per-kind 15] [--clients 20] [--seconds 20]

Prints, with the goal of each:
  bad inputs tried / crashes                       (goal: 0 crashes, and every file read or reported)
  kills survived / artifacts lost                   (goal: 0 lost, of at least 50 kills: checkpoint, index,
                                                     labels and export saves, kill -9 at random moments)
  page errors while `index` saves beside N clients  (goal: 0)
  labels lost (and misplaced) over rebuilds         (goal: 0)
and, when tests/test_security.py is present, runs it and reports its result (hostile requests). Then, against a
live page (generated photos), the hostile requests tried / leaked (goal: 0 leaked):
  URL file routes        GET/HEAD gradio_api/file=<URL>, file/<URL>, proxy=<URL>: any answered, or fetched
  FileData URLs          every event of the page given a file whose path is a URL: any not refused, or downloaded
  forwarded-header logins wrong passwords, each with a new X-Forwarded-For: any answered before its delay
  concurrent logins      wrong passwords sent at once: any answered before the delay of the tries before it
  Markdown names         hostile names through app.markup.plain, rendered by CommonMark: any link, image or HTML
  CSV formula cells      cells through app.csvfile.cell: any that a spreadsheet reads as a formula
and the resources a script can make the page use (goal: within each bound): the largest previews/ while a
script opens every photo, the largest queue while it sends thousands of open_photo calls (and how long a
search waits meanwhile), and the uploads held while it uploads without searching.
`--rows hostile,bounds` runs only these two groups.
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
from urllib.parse import quote

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


# ---------------------------------------------------------------- hostile requests and bounds (a live page)
def _serve(root: Path, per_class: int = 4, **kw: object) -> tuple[object, str]:
    from test_search import ColourEmbedder, make_index
    from test_ui import on_free_port

    from app.ui import build_app, launch

    index_dir, _ = make_index(root, per_class=per_class)
    demo = build_app(index_dir, embedder=ColourEmbedder(), page_size=6)
    _, url, _ = on_free_port(launch, demo, index_dir, prevent_thread_lock=True, quiet=True, **kw)
    return demo, url


def _logins(url: str, n: int, at_once: bool, forwarded: bool) -> list[float]:
    """Seconds until each of n wrong logins was answered (sorted)."""
    import threading

    import httpx

    t0, done = time.perf_counter(), []

    def one(i: int) -> None:
        headers = {"X-Forwarded-For": f"203.0.113.{i}"} if forwarded else {}
        httpx.post(url + "login", data={"username": "alice", "password": f"guess{i}"}, headers=headers, timeout=300)
        done.append(time.perf_counter() - t0)

    if at_once:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(n):
            one(i)
    return sorted(done)


def hostile_requests(root: Path) -> dict:
    """{row: {tried, leaked, ...}} for the hostile requests listed in the module docstring."""
    import asyncio

    import gradio.processing_utils
    import gradio.routes
    import httpx
    from markdown_it import MarkdownIt
    from starlette.responses import HTMLResponse

    from app import files
    from app.csvfile import cell
    from app.markup import plain

    rows: dict = {}
    fetched: list[str] = []

    async def fetch(url: str, request: object) -> HTMLResponse:
        fetched.append(url)
        return HTMLResponse("<script>steal()</script>")

    async def download(url: str, cache_dir: str) -> str:
        fetched.append(url)
        raise RuntimeError("downloaded")

    gradio.routes.secure_url_stream_response = fetch  # what gradio would call to fetch: counted, never run
    gradio.processing_utils.async_ssrf_protected_download = download
    demo, url = _serve(root / "urls")
    try:
        targets = ["http://localhost:9/x.png", "https://site.example/x.png", "HTTPS://site.example/x.png",
                   "ftp://site.example/x", "file:///etc/passwd", "//site.example/x.png", "data:text/html,<b>x"]
        encoded = [quote(t, safe="") for t in targets]  # percent-encoded forms
        tried = leaked = 0
        for route in ("file=", "file/", "proxy="):
            for target in targets + encoded:
                for method in ("GET", "HEAD"):
                    r = httpx.request(method, f"{url}gradio_api/{route}{target}")
                    tried += 1
                    leaked += r.status_code < 400
        rows["url_file_routes"] = {"tried": tried, "leaked": leaked + len(fetched)}
        fetched.clear()
        tried = leaked = 0
        for i, fn in demo.fns.items():
            if not fn.api_name or not fn.inputs:
                continue
            for target in targets:
                data: list = [None] * len(fn.inputs)
                data[0] = {"path": target, "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}
                body = {"data": data, "event_data": None, "fn_index": i, "trigger_id": None, "session_hash": "h"}
                r = httpx.post(url + "gradio_api/queue/join", json=body)
                tried += 1
                leaked += r.status_code != 400
        upload = next(b for b in demo.blocks.values() if type(b).__name__ == "Image")
        for target in targets:  # behind the guard: gradio's own download step
            tried += 1
            try:
                asyncio.run(upload.async_move_resource_to_block_cache(target))
                leaked += 1
            except ValueError:
                pass
        rows["filedata_urls"] = {"tried": tried, "leaked": leaked + len(fetched), "events": len(demo.fns)}
    finally:
        demo.close()

    files.LOGIN_DELAY = 0.25
    for name, at_once, forwarded in (("forwarded_logins", False, True), ("concurrent_logins", True, False)):
        demo, url = _serve(root / name, per_class=1, auth=("alice", "pw"))
        try:
            httpx.get(url, timeout=60)
            n = 6
            answered = _logins(url, n, at_once, forwarded)
            # the k-th answer (k >= 1) may come no sooner than the delays its k predecessors earned
            due = [sum(files.LOGIN_DELAY * 2 ** j for j in range(k)) for k in range(n)]
            early = sum(a + 0.05 < d for a, d in zip(answered, due))
            rows[name] = {"tried": n, "leaked": early, "last_answer_s": round(answered[-1], 2),
                          "due_s": round(due[-1], 2)}
        finally:
            demo.close()
    files.LOGIN_DELAY = 0.5

    md = MarkdownIt("commonmark")
    names = ["[x](https://site.example)", "![](https://site.example/t.png)", "<img src=x onerror=alert(1)>",
             "<https://site.example>", "<script>alert(1)</script>", "**bold**", "[x]: https://site.example\n[x]",
             "`code`", "a\n\n# heading", "&lt;b&gt;", "[x](javascript:alert(1))", "~~~\nfence",
             "<a href='https://site.example'>x</a>", "![x][y]\n\n[y]: https://site.example/t.png"]
    leaked = sum(any(tag in md.render(plain(n)) for tag in ("<a ", "<img", "<script", "<h1", "<strong", "<code", "<pre"))
                 for n in names)
    rows["markdown_names"] = {"tried": len(names), "leaked": leaked}
    cells = ["=1+1", "+1+1", "-1+1", "@SUM(A1)", "\t=1+1", "\r=1+1", "=HYPERLINK(\"https://site.example\")",
             "=cmd|' /C calc'!A0", "-2", "+", "@", "=", "\t", "\r"]
    leaked = sum(str(cell(c)).startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells)
    rows["csv_formula_cells"] = {"tried": len(cells), "leaked": leaked}
    return rows


def bounded_resources(root: Path) -> dict:
    """The largest previews/, queue and held uploads a script can make the page use, against their bounds."""
    import threading

    import httpx

    import app.handlers
    from app import limits
    from index import preview as pv

    out: dict = {}
    demo, url = _serve(root / "bounds", per_class=60)  # 240 photos
    page = demo.page  # type: ignore[attr-defined]
    fns = {f.api_name: i for i, f in demo.fns.items()}  # type: ignore[attr-defined]
    ids = [int(i) for i in page.store.all_ids()]
    try:
        from test_security import call

        # previews: every photo opened once by a script, with the cache bound scaled to 40 previews
        one = pv.preview(page.store, ids[0]).stat().st_size
        pv.PREVIEW_CACHE_BYTES = 40 * one
        largest = 0
        for i in ids:
            call(demo, url, "open_photo", i)
            largest = max(largest, sum(p.stat().st_size for p in (page.index_dir / "previews").rglob("*.jpg")))
        out["previews"] = {"photos_opened": len(ids), "bound_bytes": pv.PREVIEW_CACHE_BYTES, "largest_bytes": largest,
                           "unbounded_bytes": len(ids) * one}
        pv.PREVIEW_CACHE_BYTES = 2 * 1000**3

        # the queue: 3,000 open_photo calls while each takes its time, and a search meanwhile
        release = threading.Event()
        real = app.handlers.open_photo
        app.handlers.open_photo = lambda p, i: (release.wait(120), real(p, i))[1]
        statuses: dict[int, int] = {}
        largest_queue = 0
        with httpx.Client() as client:
            for k in range(3000):
                body = {"data": [ids[0]], "event_data": None, "fn_index": fns["open_photo"], "trigger_id": None,
                        "session_hash": f"flood{k}"}
                code = client.post(url + "gradio_api/queue/join", json=body).status_code
                statuses[code] = statuses.get(code, 0) + 1
                largest_queue = max(largest_queue, len(demo._queue))  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        call(demo, url, "search_id", ids[1])
        search_s = time.perf_counter() - t0
        release.set()
        app.handlers.open_photo = real
        out["queue"] = {"sent": 3000, "accepted": statuses.get(200, 0), "refused": statuses.get(503, 0),
                        "largest_waiting": largest_queue, "bound_per_kind": limits.QUEUE_WAITING_MAX,
                        "bound_all": limits.QUEUE_MAX, "search_during_flood_s": round(search_s, 2)}

        # uploads never searched: 14 of 24 MB each
        blob = os.urandom(24 * 1000 * 1000)
        codes = [httpx.post(url + "gradio_api/upload", files={"files": (f"{k}.png", blob)}, timeout=120).status_code
                 for k in range(14)]
        held = sum(os.path.getsize(p) for p in demo.upload_file_set if os.path.exists(p))  # type: ignore[attr-defined]
        out["uploads"] = {"sent": len(codes), "accepted": codes.count(200), "refused": codes.count(507),
                          "held_bytes": held, "bound_bytes": limits.UPLOADS_MAX_BYTES}
        from app.files import discard_upload
        from app.ui import _upload_dir

        for p in list(demo.upload_file_set):  # type: ignore[attr-defined]
            discard_upload(p, _upload_dir(demo), demo.upload_file_set)  # type: ignore[arg-type, attr-defined]
    finally:
        demo.close()  # type: ignore[attr-defined]
    return out


def print_hostile_and_bounds(figures: dict) -> None:
    for name, r in figures.get("hostile", {}).items():
        extra = f"  (last answer {r['last_answer_s']} s, due {r['due_s']} s)" if "due_s" in r else ""
        print(f"hostile {name + ' tried / leaked:':<34} {r['tried']} / {r['leaked']}{extra}")
    b = figures.get("bounds")
    if b:
        p, q, u = b["previews"], b["queue"], b["uploads"]
        print(f"previews/ largest while {p['photos_opened']} photos opened: {p['largest_bytes']:,} B (bound "
              f"{p['bound_bytes']:,} B; {p['unbounded_bytes']:,} B without it)")
        print(f"queue: {q['sent']} open_photo sent, {q['accepted']} accepted, {q['refused']} refused; largest waiting "
              f"{q['largest_waiting']} (bounds {q['bound_per_kind']} a kind, {q['bound_all']} in all); a search "
              f"meanwhile took {q['search_during_flood_s']} s")
        print(f"uploads never searched: {u['sent']} of 24 MB sent, {u['accepted']} accepted, {u['refused']} refused; "
              f"held {u['held_bytes']:,} B (bound {u['bound_bytes']:,} B)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills-per-kind", type=int, default=15, help="kills of each of 4 kinds of save (default 15)")
    ap.add_argument("--clients", type=int, default=20, help="concurrent page clients (default 20)")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long `index` saves beside them (default 20)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--rows", default="all", help="all (default), or some of hostile,bounds (only those groups)")
    args = ap.parse_args()

    import test_reliability as rel

    figures: dict = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0))}
    if args.rows != "all":
        groups = set(args.rows.split(","))
        with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
            if "hostile" in groups:
                figures["hostile"] = hostile_requests(Path(tmp))
            if "bounds" in groups:
                figures["bounds"] = bounded_resources(Path(tmp))
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print(f"machine: {figures['cpu']}, {figures['cores']} cores; {figures['date']}")
            print_hostile_and_bounds(figures)
        return 0
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

        figures["hostile"] = hostile_requests(root / "hostile")
        figures["bounds"] = bounded_resources(root / "bounded")

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
    print_hostile_and_bounds(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
