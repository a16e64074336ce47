"""The reliability suite, web part: requests a browser on the page would never send, and what the page
promises about each. Every test talks to a real server over HTTP (gradio's own routes and queue protocol).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from imagegen import shape_image
from test_search import ColourEmbedder, make_index
from test_ui import on_free_port

from app import files
from app.files import UPLOAD_REFUSED
from app.ui import _upload_dir, build_app, launch

PAGE = 6


def call(demo, url: str, api_name: str, *data, timeout: float = 20) -> tuple[object, list[dict]]:
    """(output data or error, log messages) of one event through gradio's queue, as the browser sends it."""
    fn = {f.api_name: i for i, f in demo.fns.items()}[api_name]
    data = [*data, *[None] * (len(demo.fns[fn].inputs) - len(data))]  # fields left out (the filters): empty
    session = uuid.uuid4().hex
    body = {"data": data, "event_data": None, "fn_index": fn, "trigger_id": None, "session_hash": session}
    httpx.post(url + "gradio_api/queue/join", json=body).raise_for_status()
    logs = []
    with httpx.stream("GET", url + f"gradio_api/queue/data?session_hash={session}", timeout=timeout) as s:
        for line in s.iter_lines():
            if line.startswith("data:"):
                m = json.loads(line[5:])
                logs.append(m) if m.get("msg") == "log" else None
                if m.get("msg") == "process_completed":
                    return (m["output"].get("data") if m.get("success") else m["output"]), logs
    raise AssertionError("no completion message")


def file_data(path) -> dict:
    return {"path": str(path), "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("security")
    index_dir, _ = make_index(root, per_class=4)
    demo = build_app(index_dir, embedder=ColourEmbedder(), page_size=PAGE)
    _, url, _ = on_free_port(launch, demo, index_dir, prevent_thread_lock=True, quiet=True)
    planted = Path(_upload_dir(demo)) / f"planted-{uuid.uuid4().hex}"  # files put there by hand, never uploaded
    planted.mkdir(parents=True)
    yield demo, url, root, planted
    demo.close()
    shutil.rmtree(planted, ignore_errors=True)


def test_upload_search_reads_only_files_gradio_stored_from_an_upload(page):
    """An upload search reads a file only when gradio's upload route stored it: a photo placed in gradio's
    upload folder by other means, or a link there to a photo elsewhere, is refused and searches nothing."""
    demo, url, root, planted = page
    photo = root / "photos" / "circle" / "circle_000.png"
    shutil.copy(photo, planted / "copy.png")
    (planted / "link.png").symlink_to(photo)
    for path in (planted / "copy.png", planted / "link.png"):
        data, logs = call(demo, url, "upload_search", file_data(path))
        assert not isinstance(data, list) or data[0] == {"__type__": "update"}, path  # no results
        assert [m["log"] for m in logs] in ([UPLOAD_REFUSED], []), path  # (gradio itself refuses the link)
    # the same photo, uploaded, is searched
    with open(photo, "rb") as f:
        stored = httpx.post(url + "gradio_api/upload", files={"files": ("q.png", f)}).json()[0]
    data, logs = call(demo, url, "upload_search", file_data(stored))
    assert not logs and len(data[0]) == PAGE and data[0][0]["caption"].startswith("1.000")


def test_upload_refusal_says_nothing_about_the_path(page):
    """Every refused upload path gets the same message, so nobody learns which files exist or what they are."""
    demo, url, _, planted = page
    (planted / "folder").mkdir()
    (planted / "notes.txt").write_text("not a photo")
    (planted / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (planted / "unreadable.png").write_bytes(b"x")
    (planted / "unreadable.png").chmod(0)
    messages = set()
    for name in ("missing.png", "folder", "notes.txt", "secret.png", "unreadable.png", "../" + planted.name):
        data, logs = call(demo, url, "upload_search", file_data(planted / name))
        assert "Traceback" not in json.dumps(data)
        messages.add(tuple(m["log"] for m in logs))
    assert messages == {(UPLOAD_REFUSED,)}


def test_a_fifo_never_holds_a_search_slot(page):
    """An uploaded file swapped for a FIFO is refused at once: no search slot waits on it."""
    demo, url, _, _ = page
    stored = httpx.post(url + "gradio_api/upload", files={"files": ("q.png", b"\x89PNG")}).json()[0]
    os.unlink(stored)
    os.mkfifo(stored)
    try:
        t0 = time.perf_counter()
        data, logs = call(demo, url, "upload_search", file_data(stored), timeout=30)
        assert [m["log"] for m in logs] == [UPLOAD_REFUSED] and time.perf_counter() - t0 < 30
    finally:
        try:  # release a reader that blocked on it, so the server can shut down
            os.close(os.open(stored, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        Path(stored).unlink(missing_ok=True)  # the search removes what it was given as an upload


def test_foreign_host_names_are_refused(page):
    """DNS rebinding: a request addressed to a name the server does not answer to gets 403 and a short text,
    on every route (the page, its config, the API, the queue); loopback names are answered."""
    demo, url, _, _ = page
    port = url.rstrip("/").rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", "", "10.9.8.7"):
        for method, path in (("GET", ""), ("GET", "config"), ("GET", "gradio_api/info"),
                             ("POST", "gradio_api/queue/join")):
            r = httpx.request(method, url + path, headers={"Host": host}, json={} if method == "POST" else None)
            assert r.status_code == 403, (host, path, r.status_code)
            assert "refused" in r.text and len(r.text) < 300 and "Traceback" not in r.text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert httpx.get(url + "config", headers={"Host": host}).status_code == 200, host


def test_other_web_sites_cannot_drive_the_page(page):
    """A script of another web site gets 403 for anything it sends (an upload, a queued event such as a label
    change, reading the config), and a change with another site's Referer is refused; the page itself,
    scripts without Origin, and a link followed from another site still work."""
    demo, url, _, _ = page
    upload_dir = Path(_upload_dir(demo))
    before = set(upload_dir.rglob("*"))
    same = url.rstrip("/")
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1", "http://localhost" + same[16:]):
        h = {"Origin": origin}
        r = httpx.post(url + "gradio_api/upload", files={"files": ("x.png", b"\x89PNG")}, headers=h)
        assert r.status_code == 403 and "another web site" in r.text, origin
        body = {"data": ["stolen"], "fn_index": 0, "session_hash": "x", "event_data": None, "trigger_id": None}
        assert httpx.post(url + "gradio_api/queue/join", json=body, headers=h).status_code == 403
        assert httpx.get(url + "config", headers=h).status_code == 403
    assert set(upload_dir.rglob("*")) == before  # nothing was stored
    r = httpx.post(url + "gradio_api/upload", files={"files": ("x.png", b"\x89PNG")},
                   headers={"Referer": "http://evil.example/form.html"})
    assert r.status_code == 403
    assert httpx.post(url + "gradio_api/upload", files={"files": ("x.png", b"\x89PNG")},
                      headers={"Origin": same}).status_code == 200
    assert httpx.get(url, headers={"Referer": "http://evil.example/links.html"}).status_code == 200
    assert httpx.get(url + "config").status_code == 200


def test_never_a_public_link(tmp_path, monkeypatch):
    """GRADIO_SHARE=true in the environment (notebooks, hosted machines) never opens a public share link."""
    import gradio.networking

    tunnels = []
    monkeypatch.setenv("GRADIO_SHARE", "true")
    monkeypatch.setattr(gradio.networking, "setup_tunnel",
                        lambda *a, **k: tunnels.append(k) or "https://public.example.gradio.live")
    index_dir, _ = make_index(tmp_path, per_class=1)
    demo = build_app(index_dir, embedder=ColourEmbedder())
    try:
        on_free_port(launch, demo, index_dir, prevent_thread_lock=True, quiet=True)
        assert tunnels == [] and not demo.share and demo.share_url is None
    finally:
        demo.close()


def test_failed_logins_slow_down_and_the_page_keeps_answering(tmp_path, monkeypatch):
    """Each failed login makes the client's next try wait longer (doubling); meanwhile the server answers
    other requests at once; the right password still gets in, and then the wait is forgotten."""
    monkeypatch.setattr(files, "LOGIN_DELAY", 0.7)
    index_dir, _ = make_index(tmp_path, per_class=1)
    demo = build_app(index_dir, embedder=ColourEmbedder())
    _, url, _ = on_free_port(launch, demo, index_dir, auth=("alice", "pw"), prevent_thread_lock=True, quiet=True)
    try:
        def login(password: str) -> tuple[int, float]:
            t0 = time.perf_counter()
            r = httpx.post(url + "login", data={"username": "alice", "password": password}, timeout=30)
            return r.status_code, time.perf_counter() - t0

        httpx.get(url, timeout=30)  # the server's first answer can be slow on a busy machine
        assert login("guess1")[0] == 400
        status, second = login("guess2")
        assert status == 400 and second >= 0.7
        waiting = {}
        t = threading.Thread(target=lambda: waiting.update(r=login("guess3")))
        t.start()
        time.sleep(0.1)
        assert httpx.get(url).status_code == 200 and t.is_alive()  # answered while the login waits
        t.join()
        assert waiting["r"][0] == 400 and waiting["r"][1] >= 1.4
        status, fourth = login("pw")
        assert status == 200 and fourth >= 2.8
        status, after = login("typo")
        assert status == 400 and after < fourth / 2  # a success forgets the failures
    finally:
        demo.close()


def test_a_login_from_a_file_is_not_on_the_command_line(tmp_path, monkeypatch):
    """`serve --auth-file` and $BYOL_SEARCH_AUTH give the page its login without a password in `ps`;
    a login file other users can read is refused with the chmod that fixes it."""
    import app.ui
    from app.cli import main

    launched = []
    monkeypatch.setattr(app.ui, "build_app", lambda index_dir: object())
    monkeypatch.setattr(app.ui, "launch", lambda demo, index_dir, **kw: launched.append(kw))
    index_dir, _ = make_index(tmp_path, per_class=1)
    login = tmp_path / "login"
    login.write_text("alice:s3cret\n")
    login.chmod(0o600)
    assert main(["serve", str(index_dir), "--host", "0.0.0.0", "--auth-file", str(login)]) == 0
    assert launched[-1]["auth"] == ("alice", "s3cret")
    monkeypatch.setenv(files.AUTH_ENV, "bob:env-secret")
    assert main(["serve", str(index_dir), "--host", "0.0.0.0", "--allow-host", "photos.lan"]) == 0
    assert launched[-1]["auth"] == ("bob", "env-secret") and launched[-1]["allow_hosts"] == ["photos.lan"]
    monkeypatch.delenv(files.AUTH_ENV)
    login.chmod(0o644)
    assert main(["serve", str(index_dir), "--host", "0.0.0.0", "--auth-file", str(login)]) == 2
    assert len(launched) == 2


def test_query_photo_round_trip_still_works(page, tmp_path):
    """The guard lets the page's own traffic through: an upload searched the way the browser does it."""
    demo, url, _, _ = page
    p = tmp_path / "q.png"
    shape_image("square", np.random.default_rng(3), (80, 60)).save(p)
    with open(p, "rb") as f:
        stored = httpx.post(url + "gradio_api/upload", files={"files": ("q.png", f)},
                            headers={"Origin": url.rstrip("/"), "Referer": url}).json()[0]
    data, logs = call(demo, url, "upload_search", file_data(stored))
    assert not logs and all("square_" in item["caption"] for item in data[0][:3])


# ---------------------------------------------------------------- the map, previews, duplicates, filters
def test_map_preview_and_review_endpoints_refuse_hostile_input(page):
    demo, url, root, _ = page
    data, logs = call(demo, url, "map_select", None, "1,2,3")  # no map drawn in this session
    assert logs and "draw the map first" in logs[0]["log"]
    for bad in ("../../etc/passwd", -1, "1e99"):
        data, logs = call(demo, url, "open_photo", bad)
        assert "Traceback" not in json.dumps(data) and "root:" not in json.dumps(data)
    data, logs = call(demo, url, "open_photo", 10**9)
    assert logs and "not in the index" in logs[0]["log"]
    data, logs = call(demo, url, "decide", 1, "delete")
    assert logs and "keep or drop" in logs[0]["log"]
    data, logs = call(demo, url, "filter_count", "../..", "", "", "", "")
    data2, logs2 = call(demo, url, "filter_count", "", "", "", "1970-01-01'; --", "")
    assert logs2 and "not a date" in logs2[0]["log"]
    data, logs = call(demo, url, "label_key", 99, None)
    assert logs and "label keys are 1 to 9" in logs[0]["log"]


def test_only_the_index_pictures_are_served(page):
    demo, url, root, _ = page
    index_dir = root / "index"
    ok = demo.page.store.thumbnail_path(int(demo.page.store.all_ids()[0]))
    assert httpx.get(f"{url}gradio_api/file={ok}").status_code == 200
    photo = next((root / "photos").rglob("*.png"))  # an original: never served
    for path in (photo, index_dir / "meta.sqlite", index_dir / "photo_info.sqlite", index_dir / "review.sqlite",
                 index_dir / "previews" / ".." / "meta.sqlite", index_dir / "atlas" / ".." / "labels.sqlite"):
        assert httpx.get(f"{url}gradio_api/file={path}").status_code in (403, 404), path
