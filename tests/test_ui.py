"""The page, driven over HTTP: every event through gradio_client (gallery and map clicks, which carry
event data the client cannot send, through gradio's own queue protocol in the same session), and the
file-access rules of the server (traversal, absolute paths, the index's own files, a checkpoint).
"""

from __future__ import annotations

import contextlib
import csv
import json
import socket
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from gradio_client import Client, handle_file
from imagegen import make_hazards, shape_image
from test_search import ColourEmbedder, make_index

from app.files import check_bind, parse_auth, served_paths
from app.markup import plain
from app.ui import OPEN_MODE, SELECT_MODE, build_app, launch
from index.store import EncoderMismatch, Store

PAGE = 8


@contextlib.contextmanager
def held_port():
    """A free port, held bound by this process (SO_REUSEADDR, not listening) until the block ends: a server
    started inside the block binds it, and no other process can take it in between (bind-and-release races)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def on_free_port(start, *args, **kwargs):
    """start(*args, port=P, **kwargs) on a free port P held until start returns (the server then listens)."""
    with held_port() as port:
        return start(*args, port=port, **kwargs)


class Session:
    """gradio's queue protocol for one session: what the browser sends, event data included."""

    def __init__(self, demo, url: str, session_hash: str):
        self.url, self.hash = url, session_hash
        self.fn = {f.api_name: i for i, f in demo.fns.items()}
        self.inputs = {f.api_name: f.inputs for f in demo.fns.values()}

    def call(self, api_name: str, *data, event_data=None) -> tuple[list, list[dict]]:
        """(output data, log messages) of one event; states are sent as None (the server holds them)."""
        data = [*data, *[None] * (len(self.inputs[api_name]) - len(data))]  # fields left out: empty
        body = {"data": data, "event_data": event_data, "fn_index": self.fn[api_name],
                "trigger_id": None, "session_hash": self.hash}
        httpx.post(self.url + "gradio_api/queue/join", json=body).raise_for_status()
        logs = []
        with httpx.stream("GET", self.url + f"gradio_api/queue/data?session_hash={self.hash}", timeout=60) as s:
            for line in s.iter_lines():
                if not line.startswith("data:"):
                    continue
                m = json.loads(line[5:])
                if m.get("msg") == "log":
                    logs.append(m)
                if m.get("msg") == "process_completed":
                    out = m["output"]
                    return (out.get("data") if m.get("success") else out), logs
        raise AssertionError("no completion message")


def captions(gallery) -> list[str]:
    return [item["caption"] for item in gallery]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    index_dir, by_class = make_index(root, per_class=10, duplicates=2)
    (index_dir / "checkpoint.pt").write_bytes(b"secret weights")  # someone copied a checkpoint in
    demo = build_app(index_dir, embedder=ColourEmbedder(), page_size=PAGE)
    _, url, _ = on_free_port(launch, demo, index_dir, prevent_thread_lock=True, quiet=True)
    client = Client(url, verbose=False, download_files=False)
    yield demo, url, client, Session(demo, url, client.session_hash), by_class, root
    client.close()
    demo.close()


def test_random_then_show_more(served):
    _, _, client, _, _, _ = served
    gallery, note = client.predict(api_name="/random_photos")
    assert len(gallery) == PAGE and "Random" in note
    gallery2, note2 = client.predict(api_name="/show_more")
    assert len(gallery2) == 2 * PAGE and captions(gallery2)[:PAGE] == captions(gallery)
    assert len(set(captions(gallery2))) == 2 * PAGE


def test_upload_searches_by_photo_and_pages(served, tmp_path):
    _, _, client, _, _, _ = served
    p = tmp_path / "query.png"
    shape_image("triangle", __import__("numpy").random.default_rng(7), (90, 70)).save(p)
    gallery, note = client.predict(handle_file(str(p)), api_name="/upload_search")
    names = [c.split(" · ")[1] for c in captions(gallery)]
    assert len(names) == PAGE and all(n.startswith("triangle_") for n in names)
    scores = [float(c.split(" · ")[0]) for c in captions(gallery)]
    assert scores == sorted(scores, reverse=True)
    more, _ = client.predict(api_name="/show_more")
    assert captions(more)[:PAGE] == captions(gallery) and len(more) == 2 * PAGE


def test_bad_uploads_warn_and_change_nothing(served, tmp_path):
    _, url, _, session, _, _ = served
    hazards = tmp_path / "hazards"
    expect = make_hazards(hazards)
    for name in ("notes.jpg", "bomb.png", "truncated.jpg"):
        assert expect[name] is False
        with open(hazards / name, "rb") as f:
            r = httpx.post(url + "gradio_api/upload", files={"files": (name, f)})
        path = r.json()[0]
        data, logs = session.call("upload_search", {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}})
        assert [m["level"] for m in logs] == ["warning"], (name, logs)
        assert "not a photo" in logs[0]["log"] and "Traceback" not in logs[0]["log"]
        assert data[0] == {"__type__": "update"}  # the results stay as they were
    # a path outside gradio's upload folder is refused before the handler sees it
    data, _ = session.call("upload_search", {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}})
    assert "Traceback" not in json.dumps(data) and not isinstance(data, list)


def test_upload_size_limit(served):
    _, url, _, _, _, _ = served
    r = httpx.post(url + "gradio_api/upload", files={"files": ("huge.jpg", b"\xff" * (26 * 1024 * 1024))})
    assert r.status_code == 413


def test_click_searches_from_the_photo_or_selects_it(served):
    _, _, client, session, by_class, _ = served
    gallery, _ = client.predict(api_name="/random_photos")
    clicked = captions(gallery)[2]
    data, logs = session.call("click_result", None, "search from it", None, event_data={"index": 2, "value": None})
    # the photo itself comes first (or right after a byte-identical copy of it: a tie at cosine 1)
    assert not logs and f"1.000 · {clicked}" in captions(data[0])[:3] and captions(data[0])[0].startswith("1.000")
    # in selection mode, a click toggles the photo in the selection instead
    data, _ = session.call("click_result", None, SELECT_MODE, None, event_data={"index": 1, "value": None})
    # outputs: the Search tab (5), the selection bar (3), the preview (6)
    assert data[0] == {"__type__": "update"} and len(data[5]) == 1 and "**1** selected" in data[7]
    data, _ = session.call("click_result", None, SELECT_MODE, None, event_data={"index": 1, "value": None})
    assert data[5] == [] and "**0** selected" in data[7]
    # in open mode (the page's default), a click opens the preview with the photo's neighbours
    data, logs = session.call("click_result", None, OPEN_MODE, None, event_data={"index": 1, "value": None})
    assert not logs and data[0] == {"__type__": "update"} and "/previews/" in json.dumps(data[9])
    assert "pixels" in data[10] and len(data[11]) == 8
    # a stale index (the gallery changed meanwhile) is a warning, not an error
    _, logs = session.call("click_result", None, "search from it", None, event_data={"index": 999, "value": None})
    assert logs and logs[0]["level"] == "warning"
    # the same search without a click, for scripts
    first = by_class["square"][0]
    gallery, note = client.predict(first, api_name="/search_id")
    assert captions(gallery)[0] == "1.000 · square_000.png" and plain("square_000.png") in note


def select(session, client, image_ids: list[int]) -> None:
    """Put exactly these photos in the selection, by searching from each and clicking it."""
    client.predict(api_name="/clear_selection")
    for i in image_ids:
        client.predict(i, api_name="/search_id")
        session.call("click_result", None, SELECT_MODE, None, event_data={"index": 0, "value": None})


def test_label_train_predict_accept_export(served):
    demo, _, client, session, by_class, root = served
    client.predict("round", api_name="/create_label")
    out = client.predict("boxy", api_name="/create_label")  # [name box, pickers (3), counts, filters (2), keys]
    counts = out[4]
    assert "| round | 0 |" in counts and "| boxy | 0 |" in counts

    _, _, logs = None, None, session.call("assign", None, "round")[1]
    assert logs[0]["level"] == "warning"  # nothing selected yet
    select(session, client, by_class["circle"][:2])
    out = client.predict("round", api_name="/assign")
    # [selection (2 shown; states are not), pickers (3), counts, filters (2), keys, label-next queue]
    assert out[0] == [] and "| round | 2 |" in out[5]
    select(session, client, by_class["square"][:2])
    client.predict("boxy", api_name="/assign")
    select(session, client, by_class["triangle"][:1])
    out = client.predict("pointy", api_name="/assign")  # typed into the dropdown: a new label
    assert "| pointy | 1 |" in out[5]

    report, counts = client.predict(api_name="/train")
    assert "Probe v1" in report and "Predicted 32 photos" in report and "round: 2" in report
    assert "| triangle" not in counts and "| pointy | 1 | 0 | 10 |" in counts

    gallery = client.predict(api_name="/label_next")
    assert 0 < len(gallery) <= PAGE and all("?" in c for c in captions(gallery))
    data, _ = session.call("click_next", None, None, event_data={"index": 0, "value": None})
    assert len(data[0]) == 1
    client.predict(api_name="/clear_selection")

    gallery = client.predict("predicted", "round", "most confident first", api_name="/show_labelled")
    assert gallery and all(c.startswith("round ") for c in captions(gallery))
    gallery = client.predict("labelled", "boxy", "most confident first", api_name="/show_labelled")
    assert len(gallery) == 2
    data, _ = session.call("click_prediction", None, None, event_data={"index": 1, "value": None})
    assert len(data[0]) == 1

    counts, *_ = client.predict(api_name="/accept_selected")  # a labelled photo keeps its own label
    counts = client.predict(0.99, api_name="/accept")
    assert "accepted" in counts
    labels = demo.page.labels
    assert set(labels.labelled("accepted").values()) <= {"round", "boxy", "pointy"}

    out = client.predict(api_name="/unassign")
    assert "Traceback" not in json.dumps(out)

    md, file = client.predict("CSV", False, 0.9, api_name="/export")
    assert "Wrote 32 rows" in md
    rows = list(csv.DictReader(httpx.get(file["value"]["url"]).text.splitlines()))  # the download works
    assert len(rows) == 32 and {r["label"] for r in rows} >= {"round", "boxy", "pointy"}
    md, _ = client.predict("ImageFolder (links)", True, 0.5, api_name="/export")
    assert plain("imagefolder-links-") in md and "round:" in md
    md, _ = client.predict("HF datasets", False, 0.9, api_name="/export")
    assert plain("hf-dataset-") in md and "load_from_disk" in md

    out = client.predict("pointy", "pointed", api_name="/rename_label")
    assert "| pointed |" in out[4]
    out = client.predict("pointed", api_name="/delete_label")
    assert "pointed" not in out[3]


def test_duplicates(served):
    demo, _, client, session, by_class, _ = served
    note = client.predict(0.999, api_name="/duplicates")
    assert "2 group(s)" in (note[-1] if isinstance(note, (list, tuple)) else note)
    i = by_class["circle"][0]
    data, logs = session.call("decide", i, "drop")
    assert not logs and data[0] == f"Marked photo {i} drop"
    _, logs = session.call("decide", i, "delete")
    assert logs and "keep or drop" in logs[0]["log"]
    status, file = client.predict(api_name="/export_duplicates")
    assert "no photo was deleted" in status and file


def test_map_draw_select_and_open(served):
    demo, _, client, session, by_class, _ = served
    data, _ = session.call("draw_map", "prediction", "PCA")
    payload, note = data[0], data[1]
    assert "PCA" in note and '"thumbs"' in payload
    sheets = __import__("json").loads(payload)["thumbs"]["sheets"]
    r = httpx.get(session.url.rstrip("/") + sheets[0])  # the atlas is served
    assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"
    i = by_class["square"][3]
    data, logs = session.call("map_select", None, f"{i},999999", None, None)
    assert not logs  # the map state lives in the server's session, which this call does not share
def test_unexpected_failure_is_a_short_message(served, monkeypatch):
    demo, _, _, session, _, _ = served
    monkeypatch.setattr(demo.page.probe, "label_next", lambda n: 1 / 0)
    out, _ = session.call("label_next")
    text = json.dumps(out)
    assert "Something went wrong (ZeroDivisionError" in text and "Traceback" not in text


def test_empty_index_warns(tmp_path):
    from byol.preprocess import Preprocess

    Store.create(tmp_path / "empty", 8, "0" * 64, tmp_path / "m.onnx", Preprocess().to_dict()).close()
    demo = build_app(tmp_path / "empty", embedder=ColourEmbedder())
    _, url, _ = on_free_port(launch, demo, tmp_path / "empty", prevent_thread_lock=True, quiet=True)
    try:
        session = Session(demo, url, "empty-session")
        for name in ("random_photos", "train"):
            _, logs = session.call(name)
            assert logs and "the index is empty" in logs[0]["log"]
    finally:
        demo.close()


# ---------------------------------------------------------------- file access
def test_only_thumbnails_are_served(served, tmp_path):
    _, url, _, _, by_class, root = served
    index_dir = root / "index"
    thumb = index_dir / "thumbs" / "0" / f"{by_class['circle'][0]}.jpg"
    for prefix in ("gradio_api/file=", "file="):
        r = httpx.get(url + prefix + str(thumb))
        if prefix == "gradio_api/file=":
            assert r.status_code == 200 and r.content == thumb.read_bytes()
    outside_ckpt = tmp_path / "run" / "checkpoint.pt"
    outside_ckpt.parent.mkdir()
    outside_ckpt.write_bytes(b"secret weights")
    photo = root / "photos" / "circle" / "circle_000.png"
    secrets = [index_dir / "meta.sqlite", index_dir / "manifest.json", index_dir / "labels.sqlite",
               *index_dir.glob("vectors.*.faiss"), index_dir / "checkpoint.pt", outside_ckpt, Path("/etc/passwd")]
    attempts = [str(p) for p in secrets]
    attempts += [f"{thumb.parent}/../../meta.sqlite", f"{index_dir}/thumbs/../labels.sqlite",
                 f"{index_dir}/thumbs/0/../../manifest.json", f"{index_dir}/thumbs/../../photos/circle/circle_000.png",
                 "../../../../../../etc/passwd", "/etc/../etc/passwd", str(photo)]
    http = httpx.Client()
    for prefix in ("gradio_api/file=", "file=", "gradio_api/file=//", "gradio_api/file=%2e%2e/"):
        for a in attempts:
            for path in (a, quote(a, safe="")):
                r = http.get(url + prefix + path)
                body = r.content
                assert r.status_code != 200 or not any(
                    body == p.read_bytes() for p in [*secrets[:-1], photo] if p.exists()
                ) and b"root:" not in body, (prefix, path, r.status_code)
                if prefix.startswith("gradio_api/file=") and not prefix.endswith("/"):
                    assert r.status_code in (403, 404), (prefix, path, r.status_code)


def test_auth_protects_files_and_page(tmp_path):
    index_dir, by_class = make_index(tmp_path, per_class=2)
    demo = build_app(index_dir, embedder=ColourEmbedder())
    _, url, _ = on_free_port(launch, demo, index_dir, auth=("alice", "pw"), prevent_thread_lock=True, quiet=True)
    try:
        thumb = index_dir / "thumbs" / "0" / f"{by_class['circle'][0]}.jpg"
        assert httpx.get(url + "gradio_api/file=" + str(thumb)).status_code in (401, 403)
        with httpx.Client() as c:
            assert c.post(url + "login", data={"username": "alice", "password": "wrong"}).status_code >= 400
            assert c.post(url + "login", data={"username": "alice", "password": "pw"}).status_code == 200
            assert c.get(url + "gradio_api/file=" + str(thumb)).status_code == 200
    finally:
        demo.close()


def test_bind_rules():
    check_bind("127.0.0.1", None)
    check_bind("localhost", None)
    check_bind("::1", None)
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        with pytest.raises(ValueError, match="--auth"):
            check_bind(host, None)
        check_bind(host, ("u", "p"))
    assert parse_auth("u:p:q") == ("u", "p:q") and parse_auth(None) is None
    for bad in ("u", ":p", "u:"):
        with pytest.raises(ValueError):
            parse_auth(bad)


def test_served_paths_are_the_index_pictures_only(tmp_path):
    (tmp_path / "thumbs").mkdir()
    (tmp_path / "exports").mkdir()
    (tmp_path / "atlas").mkdir()
    allowed, blocked = served_paths(tmp_path)
    root = tmp_path.resolve()
    assert allowed == [str(root / "thumbs"), str(root / "atlas"), str(root / "previews")]
    assert str(root / "exports") in blocked and str(root / "labels.sqlite") in blocked
    assert str(root / "photo_info.sqlite") in blocked and str(root / "review.sqlite") in blocked
    assert not set(allowed) & set(blocked)


def test_a_served_folder_that_is_a_link_is_not_served(tmp_path):
    (tmp_path / "thumbs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "previews").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "atlas").write_text("not a folder")
    allowed, blocked = served_paths(tmp_path)
    assert allowed == [str((tmp_path / "thumbs").resolve())]
    assert str(tmp_path.resolve() / "previews") in blocked and str(tmp_path.resolve() / "atlas") in blocked


# ---------------------------------------------------------------- the encoder and gradio the page runs on
class HashedEmbedder(ColourEmbedder):
    """A stand-in encoder that says which file it was loaded from, as index.embed.Embedder does."""

    def __init__(self, sha256: str, model_path: str = "encoder.onnx"):
        self.sha256, self.model_path = sha256, model_path


class SwitchingStore:
    """The parts of a Store the page's encoder check reads; `switch` is an index update with a new encoder."""

    def __init__(self, sha256: str):
        self.model_sha256, self.model_path, self.count, self.dim = sha256, "encoders/a.onnx", 3, 48
        self._next = None

    def switch(self, sha256: str, model_path: str) -> None:
        self._next = (sha256, model_path)

    def refresh(self) -> bool:
        if self._next is None:
            return False
        (self.model_sha256, self.model_path), self._next = self._next, None
        return True


def test_page_refuses_an_encoder_that_is_not_the_index(tmp_path, monkeypatch, capsys):
    index_dir, _ = make_index(tmp_path, per_class=1)  # built with encoder 000...
    with pytest.raises(EncoderMismatch, match="--rebuild"):
        build_app(index_dir, embedder=HashedEmbedder("f" * 64))
    build_app(index_dir, embedder=HashedEmbedder("0" * 64)).close()
    # `serve` loads the index's encoder file and refuses to start when that file has changed since indexing
    import app.ui
    import index.embed
    from app.cli import main

    monkeypatch.setattr(index.embed, "Embedder", lambda path: HashedEmbedder("e" * 64, str(path)))
    monkeypatch.setattr(app.ui, "launch", lambda *a, **k: pytest.fail("the page must not start"))
    assert main(["serve", str(index_dir)]) == 2
    err = capsys.readouterr().err
    assert "was built with encoder 000000000000" in err and "eeeeeeeeeeee" in err and "--rebuild" in err


def search_photo_with(page):
    return page.embedder.embed_images([])


def test_page_follows_the_index_to_its_new_encoder(tmp_path, monkeypatch):
    from app.ui import Page

    store = SwitchingStore("a" * 64)
    page = Page(tmp_path, store=store, embedder=HashedEmbedder("a" * 64))
    files_now = {"encoders/a.onnx": "a" * 64, "encoders/b.onnx": "b" * 64}
    monkeypatch.setattr(page, "load_encoder", lambda: HashedEmbedder(files_now[store.model_path], store.model_path))
    assert page.embedder.sha256 == "a" * 64
    store.switch("b" * 64, "encoders/b.onnx")  # `index --rebuild` saved beside the page
    page._refreshed = 0.0
    assert page.embedder.sha256 == "b" * 64  # uploads are now embedded by the index's new encoder
    # the index names a file whose content is not its encoder: uploads are refused, not searched wrongly
    store.switch("c" * 64, "encoders/b.onnx")
    page._refreshed = 0.0
    with pytest.raises(ValueError, match="another encoder"):
        search_photo_with(page)


def test_gradio_version_floor():
    import re

    import gradio as gr

    from app.ui import GRADIO_MIN, check_gradio

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    floor = re.search(r'"gradio>=([\d.]+),', pyproject).group(1)
    assert tuple(int(n) for n in floor.split(".")) == GRADIO_MIN  # what pip allows is what the page needs
    check_gradio(gr.__version__)
    check_gradio("6.24.0")
    for old in ("5.20.0", "6.0.0", "6.23.1"):
        with pytest.raises(ImportError, match=r"pip install 'gradio>=6.24,<7'"):
            check_gradio(old)


def _key_button_event(demo, session, n: int) -> str:
    """Register number-key button n's click (a private event: no API name) with the session; its name there."""
    for i, f in demo.fns.items():
        if f.inputs and getattr(f.inputs[0], "elem_id", None) == f"label-key-{n}":
            session.fn[f"key-{n}"], session.inputs[f"key-{n}"] = i, f.inputs
            return f"key-{n}"
    raise AssertionError(f"no click event on label-key-{n}")


def test_number_keys_label_by_the_name_they_show(served):
    """The label_key call a script sends, and a button's own click: the name shown travels with the key, and a
    key whose name is no longer the label at its place (another tab made one that sorts first) labels nothing."""
    demo, _, client, session, by_class, _ = served
    labels = demo.page.labels
    client.predict("kk-first", api_name="/create_label")
    n = labels.names().index("kk-first") + 1
    photos = by_class["triangle"][5:7]
    select(session, client, photos)
    for wrong in ("nope", None, ""):
        data, logs = session.call("label_key", n, wrong, None)
        assert [m["level"] for m in logs] == ["warning"], logs
        assert ("needs the name of the label it shows" if not wrong else f"key {n} showed 'nope'") in logs[0]["log"]
    assert not set(photos) & set(labels.labelled())
    data, logs = session.call("label_key", n, "kk-first", None)
    assert [m["log"] for m in logs] == ["Labelled 2 photo(s) 'kk-first'"]
    assert {labels.labelled()[i] for i in photos} == {"kk-first"}

    # the button: it sends the text it shows ("N name"); a label made meanwhile moves "kk-first" along
    select(session, client, photos)
    key = _key_button_event(demo, session, n)
    labels.create("kk-0-made-in-another-tab")  # sorts just before "kk-first": key n is that one now
    data, logs = session.call(key, f"{n} kk-first", None)
    assert [m["level"] for m in logs] == ["warning"] and f"key {n} showed 'kk-first'" in logs[0]["log"]
    assert f"{n} kk-0-made-in-another-tab" in json.dumps(data)  # the keys are shown as they are now
    assert {labels.labelled()[i] for i in photos} == {"kk-first"}  # unchanged
    data, logs = session.call(key, f"{n} kk-0-made-in-another-tab", None)
    assert [m["level"] for m in logs] == ["info"] and {labels.labelled()[i] for i in photos} == {"kk-0-made-in-another-tab"}
    labels.delete("kk-first")
    labels.delete("kk-0-made-in-another-tab")


def test_label_names_the_rule_refuses_are_explained_on_the_page(served):
    demo, _, _, session, _, _ = served
    before = demo.page.labels.names()
    data, logs = session.call("create_label", "=1+1")
    assert [m["level"] for m in logs] == ["warning"]
    assert "may not start with = + - or @" in logs[0]["log"] and "spreadsheet" in logs[0]["log"]
    # the message is shown as text: a name in it is never HTML (gradio renders a toast's message as HTML)
    data, logs = session.call("create_label", "<img src=x onerror=alert(1)>")
    assert "&lt;img src=x onerror=alert(1)&gt;" in logs[0]["log"] and "<img" not in logs[0]["log"]
    assert demo.page.labels.names() == before
    # the rule is said beside the box before anyone types
    from app.labels import LABEL_RULE

    box = next(b for b in demo.blocks.values() if getattr(b, "label", None) == "New label")
    assert box.info == LABEL_RULE and "= + - @" in LABEL_RULE


def test_the_page_scripts_are_the_files_in_app_static():
    """The number keys go into the page's head whole; each event's js= is one function expression (gradio calls
    it with the event's values), so the files' own comment lines are left out of it."""
    import shutil
    import subprocess

    from app.photomap import static_text
    from app.ui import CLEAR_MAP_JS, KEYS_JS, LOAD_MAP_JS, RECOLOUR_MAP_JS, _js, head_html

    keys = static_text(KEYS_JS)
    assert "window.byolLabelKeys" in keys and _js(KEYS_JS) in head_html()
    snippets = [_js(name) for name in (LOAD_MAP_JS, CLEAR_MAP_JS, RECOLOUR_MAP_JS)]
    for name, js in zip((LOAD_MAP_JS, CLEAR_MAP_JS, RECOLOUR_MAP_JS), snippets, strict=True):
        assert "//" in static_text(name) and "//" not in js and "=>" in js, name
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the snippets' shape was checked, not that they parse")
    for js in snippets:  # what gradio does with js=: call it as a function
        check = f"const f = ({js}); if (typeof f !== 'function') process.exit(3);"
        assert subprocess.run(["node", "-e", check], capture_output=True, timeout=30).returncode == 0, js
