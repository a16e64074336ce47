"""The reliability suite, web part: requests a browser on the page would never send, and what the page
promises about each. Every test talks to a real server over HTTP (gradio's own routes and queue protocol).
"""

from __future__ import annotations

import asyncio
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
        # a wait runs from the moment the previous failure was recorded, a little before its answer reached
        # the client, so a try sent at once is answered up to a few milliseconds short of the delay
        slack = 0.1
        assert login("guess1")[0] == 400
        status, second = login("guess2")
        assert status == 400 and second >= 0.7 - slack
        waiting = {}
        t = threading.Thread(target=lambda: waiting.update(r=login("guess3")))
        t.start()
        time.sleep(0.1)
        assert httpx.get(url).status_code == 200 and t.is_alive()  # answered while the login waits
        t.join()
        assert waiting["r"][0] == 400 and waiting["r"][1] >= 1.4 - slack
        status, fourth = login("pw")
        assert status == 200 and fourth >= 2.8 - slack
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
    ok = demo.page.store.thumbs.path(int(demo.page.store.all_ids()[0]))
    assert httpx.get(f"{url}gradio_api/file={ok}").status_code == 200
    photo = next((root / "photos").rglob("*.png"))  # an original: never served
    for path in (photo, index_dir / "meta.sqlite", index_dir / "photo_info.sqlite", index_dir / "review.sqlite",
                 index_dir / "previews" / ".." / "meta.sqlite", index_dir / "atlas" / ".." / "labels.sqlite"):
        assert httpx.get(f"{url}gradio_api/file={path}").status_code in (403, 404), path


# ---------------------------------------------------------------- no web address, ever
def test_the_file_route_never_fetches_a_web_address(page, monkeypatch):
    """`/gradio_api/file=https://...` (any scheme, encoded or not, the older /file/ spelling, the proxy route)
    is refused by the page before gradio's URL fetcher sees it: the page is nobody's proxy."""
    import gradio.routes

    fetched = []

    async def fetch(url, request):  # gradio's fetcher, which would stream the site back from our origin
        from starlette.responses import HTMLResponse

        fetched.append(url)
        return HTMLResponse("<script>steal()</script>")

    monkeypatch.setattr(gradio.routes, "secure_url_stream_response", fetch)
    demo, url, _, _ = page
    for path in ("gradio_api/file=https://site.example/x.png", "gradio_api/file=http://localhost:9/x.png",
                 "gradio_api/file=HTTPS://site.example/x.png", "gradio_api/file=https%3A%2F%2Fsite.example%2Fx.png",
                 "gradio_api/file/https://site.example/x.png", "gradio_api/file=//site.example/x.png",
                 "gradio_api/proxy=https://site.example/x.png"):
        for method in ("GET", "HEAD"):
            r = httpx.request(method, url + path)
            assert r.status_code == 403 and "<script>" not in r.text, (method, path, r.status_code)
    assert fetched == []
    ok = demo.page.store.thumbs.path(int(demo.page.store.all_ids()[0]))
    assert httpx.get(f"{url}gradio_api/file={ok}").status_code == 200  # the page's own pictures still are


def test_a_file_sent_as_a_web_address_is_never_downloaded(page, monkeypatch):
    """An event given a file whose path is a URL (the upload search, or any other event's field) is refused
    with a message and nothing is downloaded, also when the request gets past the page's guard."""
    import gradio.processing_utils

    downloads = []

    async def download(url, cache_dir):
        downloads.append(url)
        raise AssertionError("downloaded")

    monkeypatch.setattr(gradio.processing_utils, "async_ssrf_protected_download", download)
    demo, url, _, _ = page
    fns = {f.api_name: i for i, f in demo.fns.items()}
    for api_name in ("upload_search", "search_id", "filter_count"):
        for where in ("https://site.example/x.png", "http://127.0.0.1:9/x.png", "ftp://site.example/x"):
            body = {"data": [file_data(where)] + [None] * (len(demo.fns[fns[api_name]].inputs) - 1),
                    "event_data": None, "fn_index": fns[api_name], "trigger_id": None, "session_hash": "u"}
            r = httpx.post(url + "gradio_api/queue/join", json=body)
            assert r.status_code == 400 and r.json()["detail"] == files.URL_REFUSED, (api_name, where)
    # behind the guard, gradio's own step that would download refuses too
    upload = next(b for b in demo.blocks.values() if type(b).__name__ == "Image")
    with pytest.raises(ValueError, match="never fetches"):
        asyncio.run(upload.async_move_resource_to_block_cache("https://site.example/x.png"))
    assert downloads == []


# ---------------------------------------------------------------- logins
def _served_with_login(tmp_path, monkeypatch, **kw):
    monkeypatch.setattr(files, "LOGIN_DELAY", 0.2)
    index_dir, _ = make_index(tmp_path, per_class=1)
    demo = build_app(index_dir, embedder=ColourEmbedder())
    _, url, _ = on_free_port(launch, demo, index_dir, auth=("alice", "pw"), prevent_thread_lock=True, quiet=True,
                             **kw)
    httpx.get(url, timeout=30)  # the server's first answer can be slow on a busy machine
    return demo, url


def _login(url: str, password: str, headers: dict | None = None) -> int:
    return httpx.post(url + "login", data={"username": "alice", "password": password}, headers=headers,
                      timeout=60).status_code


def test_a_forwarded_for_header_does_not_make_a_new_client(tmp_path, monkeypatch):
    """Five wrong passwords, each naming another X-Forwarded-For address, wait as five from one client do
    (0 + 0.2 + 0.4 + 0.8 + 1.6 s): the client is the connection's peer, not what it says it forwards."""
    demo, url = _served_with_login(tmp_path, monkeypatch)
    try:
        t0 = time.perf_counter()
        statuses = [_login(url, f"guess{i}", {"X-Forwarded-For": f"203.0.113.{i}"}) for i in range(5)]
        assert statuses == [400] * 5 and time.perf_counter() - t0 >= 3.0
    finally:
        demo.close()


def test_wrong_logins_sent_at_once_are_answered_one_by_one(tmp_path, monkeypatch):
    """Five wrong passwords sent at once from one client take as long as five in a row: the last answer
    comes after 0.2 + 0.4 + 0.8 + 1.6 s, not with the first."""
    demo, url = _served_with_login(tmp_path, monkeypatch)
    try:
        answers: list[tuple[int, float]] = []
        t0 = time.perf_counter()
        threads = [threading.Thread(target=lambda i=i: answers.append((_login(url, f"g{i}"), time.perf_counter() - t0)))
                   for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(s for s, _ in answers) == [400] * 5
        assert max(dt for _, dt in answers) >= 3.0 and min(dt for _, dt in answers) < 1.5
    finally:
        demo.close()


def test_a_named_proxy_is_believed(tmp_path, monkeypatch):
    """Behind a reverse proxy named with --trusted-proxy, its X-Forwarded-For tells clients apart: one
    client's failures do not slow another down, while each client is still slowed down."""
    demo, url = _served_with_login(tmp_path, monkeypatch, trusted_proxies=["127.0.0.1"])
    try:
        t0 = time.perf_counter()
        assert [_login(url, "guess", {"X-Forwarded-For": f"203.0.113.{i}"}) for i in range(5)] == [400] * 5
        assert time.perf_counter() - t0 < 2.5  # five clients, one try each: nobody waits
        t0 = time.perf_counter()
        assert [_login(url, "guess", {"X-Forwarded-For": "203.0.113.99"}) for _ in range(3)] == [400] * 3
        assert time.perf_counter() - t0 >= 0.2 + 0.4  # one new client's three tries: 0, 0.2, 0.4 s waits
    finally:
        demo.close()


def test_serve_refuses_a_trusted_proxy_that_is_not_an_address(tmp_path, monkeypatch, capsys):
    import app.ui
    from app.cli import main

    launched = []
    monkeypatch.setattr(app.ui, "build_app", lambda index_dir: object())
    monkeypatch.setattr(app.ui, "launch", lambda demo, index_dir, **kw: launched.append(kw))
    index_dir, _ = make_index(tmp_path, per_class=1)
    assert main(["serve", str(index_dir), "--trusted-proxy", "proxy.example"]) == 2
    assert "--trusted-proxy" in capsys.readouterr().err and launched == []
    assert main(["serve", str(index_dir), "--trusted-proxy", "10.0.0.1"]) == 0
    assert launched[-1]["trusted_proxies"] == ["10.0.0.1/32"]


# ---------------------------------------------------------------- bounds: uploads, the queue
def test_an_upload_leaves_the_server_once_searched(page, monkeypatch):
    """The upload search deletes the file it was given (and gradio's folder for it) once the query box has
    had time to show it: searched or refused, no upload stays on the server's disk."""
    import app.limits

    monkeypatch.setattr(app.limits, "UPLOAD_SHOWN_S", 0.5)
    demo, url, root, _ = page
    photo = root / "photos" / "circle" / "circle_000.png"
    for content in (photo.read_bytes(), b"not a photo"):
        stored = httpx.post(url + "gradio_api/upload", files={"files": ("q.png", content)}).json()[0]
        assert os.path.exists(stored)
        call(demo, url, "upload_search", file_data(stored))
        # the browser loads the upload into the query box after the search: it is still there for that
        assert httpx.get(url + "gradio_api/file=" + stored).status_code == 200
        deadline = time.monotonic() + 10
        while os.path.exists(stored) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(stored) and not os.path.exists(os.path.dirname(stored))
        assert stored not in demo.upload_file_set


def test_one_upload_request_carries_one_photo_at_most(page):
    demo, url, _, _ = page
    r = httpx.post(url + "gradio_api/upload", files=[("files", (f"{i}.png", b"x" * 10_000_000)) for i in range(3)])
    assert r.status_code == 413 and "one photo at a time" in r.text


def test_a_flood_of_opened_photos_leaves_the_searches_free(page, monkeypatch):
    """A script queueing many open_photo calls (each makes a preview) fills their own line only: past
    QUEUE_WAITING_MAX waiting they are refused with a message, and a search meanwhile is answered at once."""
    import app.handlers
    from app.limits import BUSY, QUEUE_WAITING_MAX

    release = threading.Event()
    real = app.handlers.open_photo

    def slow(p, image_id):
        release.wait(60)
        return real(p, image_id)

    monkeypatch.setattr(app.handlers, "open_photo", slow)
    demo, url, _, _ = page
    fn = {f.api_name: i for i, f in demo.fns.items()}["open_photo"]
    image_id = int(demo.page.store.all_ids()[0])
    try:
        statuses, details = [], set()
        with httpx.Client() as client:
            for i in range(QUEUE_WAITING_MAX + 12):
                body = {"data": [image_id], "event_data": None, "fn_index": fn, "trigger_id": None,
                        "session_hash": f"flood{i}"}
                r = client.post(url + "gradio_api/queue/join", json=body)
                statuses.append(r.status_code)
                if r.status_code != 200:
                    details.add(r.json()["detail"])
        assert statuses.count(503) >= 10 and details == {BUSY.format(n=QUEUE_WAITING_MAX)}
        t0 = time.perf_counter()
        data, logs = call(demo, url, "search_id", image_id, timeout=30)
        assert not logs and len(data[0]) == PAGE and time.perf_counter() - t0 < 15
    finally:
        release.set()
