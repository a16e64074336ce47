"""app/files.py: who may reach the page (bind rules, logins, Host/Origin) and which uploads it may read."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from app.files import (
    AUTH_ENV,
    UPLOAD_REFUSED,
    HostGuard,
    LoginThrottle,
    allowed_hosts,
    host_name,
    read_auth_file,
    read_upload,
    resolve_auth,
)


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
