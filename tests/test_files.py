"""app/files.py: who may reach the page (bind rules, logins, Host/Origin) and which uploads it may read."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from app.files import (
    AUTH_ENV,
    FORWARDED_ENV,
    UPLOAD_REFUSED,
    URL_REFUSED,
    HostGuard,
    LoginThrottle,
    UrlGuard,
    allowed_hosts,
    client_of,
    discard_upload,
    forwarded_headers_from,
    holds_url,
    host_name,
    is_url,
    read_auth_file,
    read_upload,
    resolve_auth,
    trusted_proxies,
)
from app.limits import UploadLimit


# ---------------------------------------------------------------- uploads
@pytest.fixture
def upload_dir(tmp_path):
    d = tmp_path / "gradio"
    (d / "abc").mkdir(parents=True)
    (d / "abc" / "photo.png").write_bytes(b"\x89PNG fake photo")
    return d


def test_read_upload_reads_a_stored_upload(upload_dir):
    path = str(upload_dir / "abc" / "photo.png")
    assert read_upload(path, upload_dir, {path}) == b"\x89PNG fake photo"


def test_read_upload_refuses_everything_else_with_one_message(upload_dir, tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    (upload_dir / "abc" / "link.png").symlink_to(outside)
    os.mkfifo(upload_dir / "abc" / "fifo.png")
    (upload_dir / "abc" / "folder").mkdir()
    (upload_dir / "abc" / "big.png").write_bytes(b"x" * 101)
    stored = {str(upload_dir / "abc" / n) for n in ("link.png", "fifo.png", "folder", "big.png", "gone.png")}
    stored |= {str(outside), str(upload_dir / "abc" / ".." / ".." / "secret.png"), str(upload_dir)}
    attempts = [*stored, str(upload_dir / "abc" / "photo.png"),  # a real file, never returned by an upload
                "", None, 42, {"path": "x"}, "/etc/passwd", "rel/photo.png", "a\0b"]
    for path in attempts:
        with pytest.raises(ValueError) as e:
            read_upload(path, upload_dir, stored, max_bytes=100)
        assert str(e.value) == UPLOAD_REFUSED, path


def test_read_upload_never_blocks_on_a_fifo(upload_dir):
    fifo = upload_dir / "abc" / "photo.png"
    fifo.unlink()
    os.mkfifo(fifo)  # an upload replaced by a FIFO after it was stored
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=UPLOAD_REFUSED):
        read_upload(str(fifo), upload_dir, {str(fifo)})
    assert time.perf_counter() - t0 < 1


# ---------------------------------------------------------------- logins
def test_auth_file(tmp_path):
    f = tmp_path / "login"
    f.write_text("\n  \nalice:correct horse:battery\nbob:other\n")
    f.chmod(0o600)
    assert read_auth_file(f) == ("alice", "correct horse:battery")
    f.chmod(0o644)
    with pytest.raises(ValueError, match=f"chmod 600 {f}"):
        read_auth_file(f)
    f.chmod(0o620)
    with pytest.raises(ValueError, match="other users"):
        read_auth_file(f)
    f.write_text("no-colon\n")
    f.chmod(0o600)
    with pytest.raises(ValueError, match=f"--auth-file {f} expects user:password"):
        read_auth_file(f)
    with pytest.raises(ValueError, match="--auth-file .*missing"):
        read_auth_file(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a regular file"):
        read_auth_file(tmp_path)


def test_resolve_auth_order(tmp_path):
    f = tmp_path / "login"
    f.write_text("file:pw\n")
    f.chmod(0o600)
    env = {AUTH_ENV: "env:pw"}
    assert resolve_auth(None, None, {}) is None
    assert resolve_auth(None, None, {AUTH_ENV: ""}) is None
    assert resolve_auth(None, None, env) == ("env", "pw")
    assert resolve_auth("cli:pw", None, env) == ("cli", "pw")
    assert resolve_auth(None, str(f), env) == ("file", "pw")
    with pytest.raises(ValueError, match="not both"):
        resolve_auth("cli:pw", str(f), env)
    with pytest.raises(ValueError, match=AUTH_ENV):
        resolve_auth(None, None, {AUTH_ENV: "nopassword"})


def test_login_delay_doubles_up_to_a_cap():
    t = LoginThrottle(None, delay=0.5, delay_max=3.0)
    assert [t.wait_after(n) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_login_throttle_sleeps_without_blocking_other_requests():
    """A throttled login waits on the event loop (asyncio.sleep), so other requests are answered meanwhile."""
    statuses = iter([400, 400, 200])

    async def app(scope, receive, send):
        status = next(statuses) if scope["path"].rstrip("/") == "/login" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def noop(message):
        pass

    def scope(path, method="POST"):
        return {"type": "http", "method": method, "path": path, "client": ("10.0.0.9", 5555), "headers": []}

    async def main():
        t = LoginThrottle(app, delay=0.2)
        t0 = time.perf_counter()
        await t(scope("/login"), None, noop)  # first failure: no wait
        first = time.perf_counter() - t0
        login = asyncio.create_task(t(scope("/login/"), None, noop))  # waits 0.2 s
        await asyncio.sleep(0.01)
        t1 = time.perf_counter()
        await t(scope("/config", "GET"), None, noop)  # not delayed by the waiting login
        other = time.perf_counter() - t1
        await login
        second = time.perf_counter() - t0
        await t(scope("/login"), None, noop)  # waits 0.4 s after two failures, then succeeds
        third = time.perf_counter() - t0
        return first, other, second, third, dict(t._failures)

    first, other, second, third, failures = asyncio.run(main())
    assert first < 0.1 and other < 0.1 and 0.2 <= second < 0.5 and third >= 0.6
    assert failures == {}  # a success forgets the client


# ---------------------------------------------------------------- Host and Origin
def test_host_names():
    assert host_name("Example.ORG:7860") == "example.org"
    assert host_name("[::1]:7860") == "::1" and host_name("http://a.b:1/x?y") == "a.b"
    assert host_name("") == "" and host_name("[bad") == ""


def test_allowed_hosts():
    hosts, any_ip = allowed_hosts("127.0.0.1")
    assert hosts == {"127.0.0.1", "localhost", "::1"} and not any_ip
    hosts, any_ip = allowed_hosts("192.168.1.5", ["Photos.Example"])
    assert {"192.168.1.5", "photos.example", "localhost"} <= hosts and not any_ip
    hosts, any_ip = allowed_hosts("0.0.0.0")
    assert any_ip and "localhost" in hosts


def test_host_guard_rules():
    g = HostGuard(None, *allowed_hosts("127.0.0.1", ["photos.example"]), origins=["photos.example"])

    def ok(method="GET", **headers):
        return g.refusal(method, {k.replace("_", "-"): v for k, v in headers.items()}) is None

    assert ok(host="127.0.0.1:7860") and ok(host="localhost:7860") and ok(host="[::1]:7860")
    assert ok(host="photos.example")
    assert not ok(host="evil.example:7860") and not ok(host="127.0.0.1.evil.example") and not ok()
    assert not ok(host="10.1.2.3:7860")  # only a wildcard bind accepts any address
    same = {"host": "127.0.0.1:7860", "origin": "http://127.0.0.1:7860"}
    assert ok("POST", **same) and ok("GET", **same)
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999", "http://localhost:7860", "file://"):
        assert not ok("POST", host="127.0.0.1:7860", origin=origin), origin
        assert not ok("GET", host="127.0.0.1:7860", origin=origin), origin
    assert ok("POST", host="127.0.0.1:7860", origin="https://photos.example")  # behind a proxy
    # no Origin: a foreign Referer is refused on changes only (a link from another site still opens the page)
    assert ok("GET", host="127.0.0.1:7860", referer="http://evil.example/page")
    assert not ok("POST", host="127.0.0.1:7860", referer="http://evil.example/page")
    assert ok("POST", host="127.0.0.1:7860", referer="http://127.0.0.1:7860/")
    assert ok("POST", host="127.0.0.1:7860")  # scripts send neither
    wild = HostGuard(None, *allowed_hosts("0.0.0.0"))
    assert wild.refusal("GET", {"host": "10.1.2.3:7860"}) is None
    assert wild.refusal("GET", {"host": "[fe80::1]:7860"}) is None
    assert wild.refusal("GET", {"host": "evil.example:7860"}) is not None


# ---------------------------------------------------------------- logins: who a client is, bursts
def _login_app(statuses):
    async def app(scope, receive, send):
        await asyncio.sleep(0)  # checking a password gives way to the event loop, as a real route does
        await send({"type": "http.response.start", "status": next(statuses), "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


def _login_scope(peer="10.0.0.9", headers=()):
    return {"type": "http", "method": "POST", "path": "/login", "client": (peer, 5555), "headers": list(headers)}


def test_a_burst_of_wrong_logins_is_answered_one_by_one():
    """Tries sent at once by one client wait for each other's answers and delays: five at once take as long
    as five in a row (0 + 0.1 + 0.2 + 0.4 + 0.8 s); past max_waiting they are refused at once (429)."""
    answered = []

    async def main():
        t = LoginThrottle(_login_app(iter([400] * 20)), delay=0.1, max_waiting=5)

        async def one(i):
            sent = []

            async def send(m):
                sent.append(m)

            await t(_login_scope(), None, send)
            answered.append((sent[0]["status"], time.perf_counter() - t0))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(7)))
        return t

    t = asyncio.run(main())
    statuses = sorted(s for s, _ in answered)
    assert statuses == [400] * 5 + [429] * 2
    assert max(dt for s, dt in answered if s == 429) < 0.1  # refused without waiting
    waits = sorted(dt for s, dt in answered if s == 400)
    assert waits[-1] >= 0.1 + 0.2 + 0.4 + 0.8 and waits[0] < 0.1
    assert t._failures == {"10.0.0.9": 5} and t._turns == {} and t._waiting == {}  # nothing left waiting


def test_a_client_is_the_connections_peer_whatever_headers_it_sends():
    """X-Forwarded-For and friends do not make a new client: the throttle counts failures by peer."""
    async def main():
        t = LoginThrottle(_login_app(iter([400] * 4)), delay=0.05)

        async def send(m):
            pass

        for i in range(4):
            await t(_login_scope(headers=[(b"x-forwarded-for", f"203.0.113.{i}".encode()),
                                          (b"forwarded", f"for=198.51.100.{i}".encode())]), None, send)
        return t

    t0 = time.perf_counter()
    t = asyncio.run(main())
    assert dict(t._failures) == {"10.0.0.9": 4} and time.perf_counter() - t0 >= 0.05 + 0.1 + 0.2
    assert client_of({"client": ("192.0.2.7", 1)}) == "192.0.2.7" and client_of({}) == "?"


def test_trusted_proxies_are_addresses_and_by_default_nobody():
    assert trusted_proxies(["127.0.0.1", " 10.0.0.0/8", "::1"]) == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    for bad in ("proxy.example", "*", "", "10.0.0.300"):
        with pytest.raises(ValueError, match="--trusted-proxy"):
            trusted_proxies([bad])
    before = os.environ.get(FORWARDED_ENV)
    with forwarded_headers_from():
        assert os.environ[FORWARDED_ENV] == ""  # uvicorn believes no peer's X-Forwarded-For
    with forwarded_headers_from(["10.1.2.3"]):
        assert os.environ[FORWARDED_ENV] == "10.1.2.3/32"
    assert os.environ.get(FORWARDED_ENV) == before


def test_uvicorn_believes_forwarded_headers_only_from_named_proxies():
    """The setting as uvicorn reads it: by default a loopback peer's X-Forwarded-For would be believed."""
    import uvicorn
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    def client_seen(proxies):
        with forwarded_headers_from(proxies):
            cfg = uvicorn.Config(app=None)
        seen = {}

        async def app(scope, receive, send):
            seen["client"] = scope["client"][0]

        mw = ProxyHeadersMiddleware(app, trusted_hosts=cfg.forwarded_allow_ips)
        scope = {"type": "http", "client": ("127.0.0.1", 1), "headers": [(b"x-forwarded-for", b"203.0.113.5")]}
        asyncio.run(mw(scope, None, None))
        return seen["client"]

    assert client_seen([]) == "127.0.0.1"
    assert client_seen(["127.0.0.1"]) == "203.0.113.5"


# ---------------------------------------------------------------- no web address, ever
def test_is_url_and_holds_url():
    for url in ("http://a/x.png", "https://site.example/x.png", "HTTPS://A/x", " ftp://a", "file:///etc/passwd",
                "data:image/png;base64,AA", "//host/share/x.png", "\\\\host\\share"):
        assert is_url(url), url
    for path in ("/tmp/gradio/abc/q.png", "photos/a:b.png", "", None, 3):
        assert not is_url(path), path
    browser = {"path": "/tmp/gradio/abc/q.png", "url": "http://127.0.0.1:7860/gradio_api/file=/tmp/gradio/abc/q.png",
               "meta": {"_type": "gradio.FileData"}}
    assert not holds_url({"data": [browser, "text", 3, None]})  # the page's own upload: its url is the page's
    assert holds_url({"data": [None, [{"x": {"path": "https://site.example/x.png"}}]]})
    assert holds_url({"data": [{"path": "http://localhost:9/x.png", "meta": {"_type": "gradio.FileData"}}]})
    deep: object = {"path": "/ok"}
    for _ in range(100):
        deep = [deep]
    assert holds_url(deep)  # nesting no page request has


def _asgi(guard, method, path, body=b"", chunks=None):
    """(status, body, whether the app behind saw the request, the body it received) of one request."""
    seen = {}

    async def app(scope, receive, send):
        msg = await receive()
        seen["body"] = msg.get("body", b"")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    g = guard(app)
    parts = chunks or [body]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    out = []

    async def send(m):
        out.append(m)

    asyncio.run(g({"type": "http", "method": method, "path": path, "headers": [], "client": ("127.0.0.1", 1)},
                  receive, send))
    return out[0]["status"], out[1]["body"], "body" in seen, seen.get("body")


def test_url_guard_refuses_web_addresses_before_gradio_sees_them():
    for path in ("/gradio_api/file=http://localhost:9/x.png", "/gradio_api/file=https://site.example/x.png",
                 "/gradio_api/file=HTTPS://site.example/x.png", "/gradio_api/file/https://site.example/x.png",
                 "/gradio_api/file=//site.example/x.png", "/gradio_api/proxy=https://site.example/x",
                 "/root/gradio_api/file=ftp://site.example/x"):
        status, body, reached, _ = _asgi(UrlGuard, "GET", path)
        assert status == 403 and not reached and URL_REFUSED.encode() in body, path
    assert _asgi(UrlGuard, "GET", "/gradio_api/file=/index/thumbs/0/1.jpg")[2]  # the page's own pictures pass
    event = {"data": [{"path": "https://site.example/x.png", "meta": {"_type": "gradio.FileData"}}],
             "fn_index": 0, "session_hash": "s"}
    status, body, reached, _ = _asgi(UrlGuard, "POST", "/gradio_api/queue/join", json.dumps(event).encode())
    assert status == 400 and not reached and json.loads(body) == {"detail": URL_REFUSED}
    ok = json.dumps({"data": [{"path": "/tmp/gradio/abc/q.png"}], "fn_index": 0}).encode()
    status, _, reached, received = _asgi(UrlGuard, "POST", "/gradio_api/queue/join", chunks=[ok[:10], ok[10:]])
    assert status == 200 and reached and received == ok  # the body read is handed on whole
    assert _asgi(UrlGuard, "POST", "/gradio_api/upload", b"--multipart https://x")[2]  # not JSON: passes
    status, _, reached, _ = _asgi(lambda a: UrlGuard(a, max_bytes=100), "POST", "/gradio_api/queue/join", b"x" * 101)
    assert status == 413 and not reached


# ---------------------------------------------------------------- uploads: removed after use, bounded
def test_discard_upload_removes_only_what_gradio_stored(upload_dir, tmp_path):
    stored = str(upload_dir / "abc" / "photo.png")
    outside = tmp_path / "photo.jpg"
    outside.write_bytes(b"x")
    uploaded = {stored, str(outside)}
    assert not discard_upload(str(outside), upload_dir, uploaded) and outside.exists()
    assert not discard_upload(str(upload_dir / "nope.png"), upload_dir, uploaded)
    assert discard_upload(stored, upload_dir, uploaded)
    assert not (upload_dir / "abc").exists() and uploaded == set()  # the file, its folder, and its record


def test_upload_limit_bounds_each_upload_and_all_waiting_ones(upload_dir):
    class Blocks:
        upload_file_set: set[str] = set()

    blocks = Blocks()
    old = upload_dir / "old" / "q.png"
    old.parent.mkdir()
    old.write_bytes(b"o" * 500)
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    fresh = upload_dir / "abc" / "photo.png"
    blocks.upload_file_set = {str(old), str(fresh)}
    limit = UploadLimit(None, blocks, lambda: str(upload_dir), max_request=1000, max_stored=1000, keep_s=60)
    assert limit.refusal(None)[0] == 411
    assert limit.refusal(1001)[0] == 413
    assert limit.refusal(900) is None and not old.exists()  # the upload never searched is gone
    assert blocks.upload_file_set == {str(fresh)}
    fresh.write_bytes(b"f" * 600)
    status, message = limit.refusal(500)
    assert status == 507 and "try again in a few minutes" in message.lower()
