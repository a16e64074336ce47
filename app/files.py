"""Who may reach the page and which files it may serve.

Safe by default: the server binds the loopback interface; any other address needs a user and password.
The page only ever shows pictures the index made itself: thumbnails (thumbs/), the photo map's sprite sheets
(atlas/) and 1024 px previews (previews/), so these three folders are the ones served, never an original
photo; everything else in the index (FAISS index, SQLite databases, manifest, exports) and every other path
is refused, whatever the URL (traversal with ../, absolute paths, encoded variants), because gradio serves a
file only when it lies in an allowed folder and outside every blocked one.

No web address, ever (`UrlGuard`, `refuse_url_fetches`): gradio fetches a URL given to its file route
(`/gradio_api/file=https://...`) or as the path of a file sent to an event, and streams or stores what it
got. The page refuses both before gradio sees them, and its components refuse to download even if a request
got past the guard: the page never fetches anything on anyone's behalf.

Requests are also checked before gradio sees them (`HostGuard`): only the names the server listens on are
answered (a page on another site cannot reach it by DNS rebinding), and no other web site may drive it
(a foreign Origin, or a foreign Referer on a request that changes something, is refused). An upload is
read only when gradio itself stored it (`read_upload`). Failed logins are slowed down per client
(`LoginThrottle`), a client being the address the connection comes from (`client_of`): X-Forwarded-For is
believed only from a proxy the user named (`forwarded_headers_from`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import logging
import os
import re
import socket
import stat
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gradio import Blocks
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from index.store import Store

log = logging.getLogger("byol_search.page")

# Uploaded query photos larger than this are refused by the server before they reach the decoder.
MAX_UPLOAD = "25mb"
MAX_UPLOAD_BYTES = 25 * 1000 * 1000  # the same limit in bytes (gradio's "mb" is 10^6)
# The one answer to an upload path that is not a file gradio stored from an upload: the same whatever the
# path, so that a caller learns nothing about the server's files (exists, folder, FIFO, unreadable, ...).
UPLOAD_REFUSED = "no photo received: upload or paste an image file"
# Login as user:password from the environment, for when --auth on the command line would show it in `ps`.
AUTH_ENV = "BYOL_SEARCH_AUTH"
# Names every server answers to, whatever --host says.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# After the first failed login a client waits LOGIN_DELAY s before its next try, doubling with each
# further failure up to LOGIN_DELAY_MAX s; a success resets it. 10 guesses then cost about 4 minutes.
LOGIN_DELAY, LOGIN_DELAY_MAX = 0.5, 60.0
# Logins of one client are answered one at a time; more than this many waiting at once are refused (429).
LOGIN_WAITING_MAX = 8
# The answer to every web address the page is asked to fetch or serve.
URL_REFUSED = "byol-search never fetches a web address: send the photo itself (upload or paste it)"
# Request bodies of events (JSON) larger than this are refused before they are parsed (413): the largest the
# page sends (a map selection of 100,000 ids) is under 1 MB.
MAX_EVENT_BYTES = 8 * 1000 * 1000
# uvicorn's setting of which peers may tell it the client's address (X-Forwarded-For); none unless named.
FORWARDED_ENV = "FORWARDED_ALLOW_IPS"
# Files an index holds besides its thumbnails; blocked by name even before they exist.
INDEX_FILES = ("meta.sqlite", "vectors.faiss", "labels.sqlite", "manifest.json", "photo_info.sqlite",
               "review.sqlite")
# Folders of the index the page serves besides the thumbnails: pictures the index made itself, nothing else
SERVED_FOLDERS = ("atlas", "previews")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@overload
def parse_auth(text: str, what: str = ...) -> tuple[str, str]: ...
@overload
def parse_auth(text: None, what: str = ...) -> None: ...
@overload
def parse_auth(text: str | None, what: str = ...) -> tuple[str, str] | None: ...
def parse_auth(text: str | None, what: str = "--auth") -> tuple[str, str] | None:
    """'user:password' -> (user, password); None stays None. `what` names the source in the error."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError(f"{what} expects user:password (both non-empty), e.g. alice:correct-horse")
    return user, password


def read_auth_file(path: str | Path) -> tuple[str, str]:
    """(user, password) from the first non-empty line of a file only its owner can read or change."""
    path = Path(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"--auth-file {path}: not a regular file")
        if st.st_mode & 0o077:
            raise ValueError(f"--auth-file {path} can be read or changed by other users (mode "
                             f"{stat.S_IMODE(st.st_mode):o}); make it private with: chmod 600 {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"--auth-file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"--auth-file {path}: not a UTF-8 text file") from None
    text = next((line for line in lines if line.strip()), "")
    return parse_auth(text, what=f"--auth-file {path}")


def resolve_auth(auth: str | None, auth_file: str | None,
                 environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """The login asked for: --auth, else --auth-file, else $BYOL_SEARCH_AUTH, else None (no login)."""
    if auth is not None and auth_file is not None:
        raise ValueError("give --auth or --auth-file, not both")
    if auth_file is not None:
        return read_auth_file(auth_file)
    if auth is not None:
        return parse_auth(auth)
    if environ.get(AUTH_ENV):
        return parse_auth(environ[AUTH_ENV], what=AUTH_ENV)
    return None


def check_bind(host: str, auth: tuple[str, str] | None) -> None:
    """Refuse to listen beyond this machine without a password."""
    if not is_loopback(host) and auth is None:
        raise ValueError(
            f"--host {host} would let anyone on the network see and label your photos: add a login "
            f"(--auth-file FILE holding user:password, or ${AUTH_ENV}, or --auth user:password), or keep the "
            "default --host 127.0.0.1 (this machine only)")


def thumbs_dir(index_dir: str | Path, store: Store | None = None) -> Path:
    """The folder of cached thumbnails: the store's own when it says, else INDEX_DIR/thumbs."""
    d = getattr(store, "thumbs_dir", None) if store is not None else None
    return Path(d if d is not None else Path(index_dir) / "thumbs").resolve()


def served_paths(index_dir: str | Path, store: Store | None = None) -> tuple[list[str], list[str]]:
    """(allowed_paths, blocked_paths) for gradio's launch: the thumbnails, the map's sheets and the previews
    (SERVED_FOLDERS, each only when it is a real folder inside the index, not a link out of it), and
    nothing else of the index."""
    index_dir = Path(index_dir).resolve()
    thumbs = thumbs_dir(index_dir, store)
    allowed = [thumbs]
    for name in SERVED_FOLDERS:
        d = index_dir / name
        if d.is_symlink() or (d.exists() and not d.is_dir()):
            continue  # someone put a link or a file there: serve nothing by that name
        allowed.append(d)
    blocked = {index_dir / n for n in INDEX_FILES}
    blocked |= {index_dir / f"{n}{s}" for n in INDEX_FILES for s in ("-wal", "-shm", "-journal")}
    if index_dir.is_dir():
        # every other entry of the index, present now (exports, checkpoints copied in, temporary files)
        blocked |= {p.resolve() for p in index_dir.iterdir() if p.resolve() not in allowed}
        blocked |= {index_dir / n for n in SERVED_FOLDERS if (index_dir / n) not in allowed}
    return [str(p) for p in allowed], sorted(str(p) for p in blocked)


# ---------------------------------------------------------------------- uploads
def read_upload(path: object, upload_dir: str | Path, uploaded: Collection[str], max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """The bytes of an uploaded query photo, read only when gradio itself stored it.

    `path` comes from the browser, so it is a claim: it must be one of the paths gradio's upload route
    returned (`uploaded`), lie inside `upload_dir` once links are resolved, and be a regular file: never a
    folder, FIFO or device (it is opened non-blocking and checked again on the open file, so a swap between
    the check and the open is caught too). Anything else raises ValueError(UPLOAD_REFUSED), the same for
    every path.
    """

    def refused() -> ValueError:
        return ValueError(UPLOAD_REFUSED)

    if not isinstance(path, str) or not path or "\0" in path or path not in uploaded:
        raise refused()
    root, real = os.path.realpath(upload_dir), os.path.realpath(path)
    if real == root or os.path.commonpath([root, real]) != root:
        raise refused()
    try:
        before = os.stat(real)
    except OSError:
        raise refused() from None
    if not stat.S_ISREG(before.st_mode) or before.st_size > max_bytes:
        raise refused()
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise refused() from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise refused()
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise refused()
    return data


def discard_upload(path: object, upload_dir: str | Path, uploaded: set[str]) -> bool:
    """Delete an upload gradio stored (and its folder, gradio's one per upload, once empty): after its
    search, or when it waited too long. Only a path gradio's upload route returned and inside `upload_dir`;
    returns whether a file was deleted."""
    if not isinstance(path, str) or path not in uploaded:
        return False
    uploaded.discard(path)
    root, real = os.path.realpath(upload_dir), os.path.realpath(path)
    if real == root or os.path.commonpath([root, real]) != root:
        return False
    try:
        os.unlink(real)
    except OSError:
        return False
    with contextlib.suppress(OSError):
        if os.path.dirname(real) != root:
            os.rmdir(os.path.dirname(real))  # fails, harmlessly, while another upload is in it
    return True


# ---------------------------------------------------------------------- who may send requests
def host_name(value: str) -> str:
    """The lower-case host of a Host header or URL ('Example.org:7860', '[::1]:80', 'http://a:1/x'); '' if none."""
    try:
        return urlsplit(value if "://" in value else "//" + value).hostname or ""
    except ValueError:
        return ""


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> tuple[frozenset[str], bool]:
    """(the names requests may be addressed to, whether any IP address is allowed too).

    Loopback names, the --host value and the `extra` names (--allow-host). Listening on every interface
    (0.0.0.0, ::), the machine's own names are added and any IP address is accepted: a request addressed to
    an IP address comes from a page loaded from that address, never from another site's name re-pointed at
    this machine (DNS rebinding needs a name).
    """
    names = {*LOOPBACK_NAMES, host_name(host), *(host_name(n) for n in extra)}
    try:
        wildcard = ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(n for n in names if n), wildcard


def _same_origin(url: str, host_header: str) -> bool:
    """Whether an Origin or Referer URL names the server the request was addressed to (scheme aside)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc.lower() == host_header.lower()


class HostGuard:
    """ASGI middleware in front of the page: refuses, with 403 and a short text, every request

    - addressed to a name the server was not told to answer to (Host header): DNS rebinding;
    - sent by a script of another web site (an Origin header naming another server), whatever the method;
    - that changes something (not GET/HEAD/OPTIONS) with a Referer from another web site.

    Browsers always send Origin on cross-site requests; scripts and command-line clients send neither
    Origin nor Referer and pass. Names given with --allow-host are also accepted as origins (a reverse
    proxy in front of the page).
    """

    SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))

    def __init__(self, app: ASGIApp, hosts: Iterable[str] = LOOPBACK_NAMES, any_ip: bool = False,
                 origins: Iterable[str] = ()):
        self.app = app
        self.hosts, self.any_ip = frozenset(hosts), any_ip
        self.origins = frozenset(host_name(o) for o in origins)

    def refusal(self, method: str, headers: Mapping[str, str]) -> str | None:
        """None when the request may pass, else the reason told to the client."""
        host = headers.get("host", "")
        name = host_name(host)
        if not name or not (name in self.hosts or (self.any_ip and _is_ip(name))):
            return (f"byol-search refused this request: {host or 'no host'!r} is not a name this server answers "
                    f"to ({', '.join(sorted(self.hosts))}). Open the page at one of those, or add the name "
                    "with --allow-host.")
        origin = headers.get("origin")
        if origin is not None:
            if not (_same_origin(origin, host) or host_name(origin) in self.origins):
                return f"byol-search refused a request sent by another web site ({origin[:100]})."
        elif method not in self.SAFE_METHODS:
            referer = headers.get("referer")
            if referer and not (_same_origin(referer, host) or host_name(referer) in self.origins):
                return "byol-search refused a change requested from another web site."
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        reason = self.refusal(scope.get("method", "GET"), headers)
        if reason is None:
            return await self.app(scope, receive, send)
        log.warning("refused %s %s from %s: %s", scope.get("method", "WEBSOCKET"), scope.get("path"),
                    client_of(scope), reason)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await answer(send, 403, reason)


class LoginThrottle:
    """ASGI middleware: each failed login makes that client's next login wait longer (exponentially).

    A client's logins are answered one at a time, each after the wait its failures so far earn (measured from
    the last failure), so tries sent at once are no faster than tries sent one after another: the second of
    a burst already waits for the first's answer and LOGIN_DELAY more. More than `max_waiting` tries of one
    client waiting at once are refused (429). The wait is an `asyncio.sleep` before the request reaches the
    login route, so the server goes on answering everything else meanwhile. Clients are told apart by
    `client_of` (the connection's peer); at most `max_clients` are remembered.
    """

    def __init__(self, app: ASGIApp, delay: float | None = None, delay_max: float | None = None,
                 max_clients: int = 10_000, max_waiting: int | None = None):
        self.app = app
        self.delay = LOGIN_DELAY if delay is None else delay
        self.delay_max = LOGIN_DELAY_MAX if delay_max is None else delay_max
        self.max_clients = max_clients
        self.max_waiting = LOGIN_WAITING_MAX if max_waiting is None else max_waiting
        self._failures: OrderedDict[str, int] = OrderedDict()
        self._last_failure: dict[str, float] = {}
        self._turns: dict[str, asyncio.Lock] = {}  # one login at a time per client
        self._waiting: dict[str, int] = {}

    def wait_after(self, failures: int) -> float:
        return 0.0 if failures < 1 else min(self.delay * 2 ** (failures - 1), self.delay_max)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path", "").rstrip("/") != "/login":
            return await self.app(scope, receive, send)
        client = client_of(scope)
        if self._waiting.get(client, 0) >= self.max_waiting:
            log.warning("refused a login from %s: %d tries already waiting", client, self.max_waiting)
            return await answer(send, 429, "byol-search refused this login: too many tries at once from your "
                                           "address; wait for the answers and try again.")
        self._waiting[client] = self._waiting.get(client, 0) + 1
        turn = self._turns.setdefault(client, asyncio.Lock())
        try:
            async with turn:
                wait = self._last_failure.get(client, 0.0) + self.wait_after(self._failures.get(client, 0))
                if wait > time.monotonic():
                    await asyncio.sleep(wait - time.monotonic())
                await self._try(client, scope, receive, send)
        finally:
            self._waiting[client] -= 1
            if not self._waiting[client]:  # nobody of this client waits: forget the turn
                del self._waiting[client], self._turns[client]

    async def _try(self, client: str, scope: Scope, receive: Receive, send: Send) -> None:
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, send_status)
        if status == 200:
            self._failures.pop(client, None)
            self._last_failure.pop(client, None)
        elif status in (400, 401, 403):
            self._failures[client] = self._failures.get(client, 0) + 1
            self._failures.move_to_end(client)
            self._last_failure[client] = time.monotonic()
            while len(self._failures) > self.max_clients:
                self._last_failure.pop(self._failures.popitem(last=False)[0], None)


# ---------------------------------------------------------------------- who a client is
def client_of(scope: Scope) -> str:
    """The address a request comes from: the connection's peer as the server saw it. uvicorn replaces it
    with the X-Forwarded-For address only when the peer is a proxy named with `forwarded_headers_from`,
    so a client cannot pick its own address by sending that header."""
    return str((scope.get("client") or ("?",))[0])


def trusted_proxies(values: Iterable[str]) -> list[str]:
    """--trusted-proxy values checked: IP addresses or networks (10.0.0.0/8); ValueError names a bad one."""
    out = []
    for v in values:
        try:
            out.append(str(ipaddress.ip_network(v.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"--trusted-proxy {v!r}: give the IP address (or network) of the reverse proxy in "
                             "front of the page, e.g. 127.0.0.1 or 10.0.0.0/8") from None
    return out


@contextlib.contextmanager
def forwarded_headers_from(proxies: Iterable[str] = ()) -> Iterator[None]:
    """While the server starts: uvicorn believes X-Forwarded-For only from `proxies` (by default it believes
    any loopback peer, so every local script could pose as a new client per request). Nobody by default."""
    before = os.environ.get(FORWARDED_ENV)
    os.environ[FORWARDED_ENV] = ",".join(trusted_proxies(proxies))  # "" matches no peer
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(FORWARDED_ENV, None)
        else:
            os.environ[FORWARDED_ENV] = before


# ---------------------------------------------------------------------- no URL, ever
_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.\-]*:")
# gradio's routes that fetch a URL they are given: its file route (and the older spelling) and its proxy
_FETCHING_ROUTE = re.compile(r"/(file=|file/|proxy=)(.*)", re.DOTALL)
# POST routes whose bodies are not JSON: the upload (multipart) and the login (a form)
_NOT_JSON = ("/upload", "/login")


def is_url(text: object) -> bool:
    """Whether a path sent by a client names a place on another machine: any scheme (http:, https:, ftp:,
    file:, data:, ...) or a network path (//host, \\\\host). Photo paths of the page never do."""
    if not isinstance(text, str):
        return False
    return bool(_SCHEME.match(text)) or text.lstrip().startswith(("//", "\\\\"))


def holds_url(value: object, depth: int = 64) -> bool:
    """Whether decoded JSON holds a file (a dict with a "path", as gradio's FileData) whose path is a web
    address. Only "path" counts: gradio downloads that; its "url" is the page's own address of the file."""
    todo: list[tuple[object, int]] = [(value, 0)]
    while todo:
        v, d = todo.pop()
        if d > depth:
            return True  # nesting no page request has: refused as if it held one
        if isinstance(v, dict):
            if is_url(v.get("path")):
                return True
            todo.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            todo.extend((x, d + 1) for x in v)
    return False


async def answer(send: Send, status: int, text: str, as_json: bool = False) -> None:
    """A short refusal: plain text, or gradio's JSON error ({"detail": text}) for its own routes."""
    body = (json.dumps({"detail": text}) if as_json else text + "\n").encode()
    kind = b"application/json" if as_json else b"text/plain; charset=utf-8"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, max_bytes: int) -> bytes | None:
    """The whole request body, or None once it passes `max_bytes` (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # the client went away: what came
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the client's own messages (a disconnect)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


class UrlGuard:
    """ASGI middleware in front of gradio: the page never fetches a web address for anyone.

    - GET/HEAD of gradio's file route with a URL (`/gradio_api/file=https://...`, any scheme, encoded or
      not: the path is checked decoded) and of its proxy route: 403, before gradio's URL fetcher sees it;
    - a JSON body (an event: queue/join, call, run) holding a file whose path is a URL: 400 with gradio's
      error shape, so nothing is downloaded; bodies over MAX_EVENT_BYTES: 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_EVENT_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        fetching = _FETCHING_ROUTE.search(path)
        if fetching and (fetching.group(1) == "proxy=" or is_url(fetching.group(2))):
            log.warning("refused %s %s from %s: a web address", scope.get("method"), path[:200], client_of(scope))
            return await answer(send, 403, URL_REFUSED)
        if scope.get("method") != "POST" or path.rstrip("/").endswith(_NOT_JSON):
            return await self.app(scope, receive, send)
        body = await read_body(receive, self.max_bytes)
        if body is None:
            return await answer(send, 413, f"byol-search refused a request over {self.max_bytes // 10**6} MB.",
                                as_json=True)
        try:
            data = json.loads(body) if body else None
        except (ValueError, RecursionError):
            data = None  # not JSON: gradio refuses it itself
        if holds_url(data):
            log.warning("refused POST %s from %s: a file given as a web address", path[:200], client_of(scope))
            return await answer(send, 400, URL_REFUSED, as_json=True)
        await self.app(scope, replay(body, receive), send)


def _no_url(fetch: Callable[..., Any]) -> Callable[..., Any]:
    """gradio's `(async_)move_resource_to_block_cache` refusing a web address instead of downloading it."""
    if asyncio.iscoroutinefunction(fetch):
        @functools.wraps(fetch)
        async def refuse_async(url_or_file_path: Any) -> Any:
            if is_url(str(url_or_file_path)):
                raise ValueError(URL_REFUSED)
            return await fetch(url_or_file_path)

        return refuse_async

    @functools.wraps(fetch)
    def refuse(url_or_file_path: Any) -> Any:
        if is_url(str(url_or_file_path)):
            raise ValueError(URL_REFUSED)
        return fetch(url_or_file_path)

    return refuse


def refuse_url_fetches(blocks: Blocks) -> int:
    """Make every component of the page refuse to download a file given as a web address (gradio moves the
    files of an event's inputs into its cache through these two methods, downloading URLs), so that even a
    request that got past `UrlGuard` fetches nothing. Returns how many components were changed."""
    changed = 0
    for block in [blocks, *blocks.blocks.values()]:
        for name in ("async_move_resource_to_block_cache", "move_resource_to_block_cache"):
            fetch = getattr(block, name, None)
            if fetch is not None and not getattr(fetch, "refuses_urls", False):
                guarded = _no_url(fetch)
                guarded.refuses_urls = True  # type: ignore[attr-defined]  # launched twice: wrapped once
                setattr(block, name, guarded)
                changed += 1
    return changed
