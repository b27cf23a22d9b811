"""The app's real server over HTTP (issue 23, items 1 and 3): renders land in per-session random folders that no
other client can name, the output folder is not served, and on loopback foreign Host / Origin headers, and
uploads over the cap, are refused."""

import io
import json
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import app
from webapp.serve import CACHE_ALIAS, DELETE_CACHE, HostOriginGuard, is_loopback, launch_options

pytestmark = pytest.mark.xdist_group("gradio")  # imports gradio: one worker (tests/xdist_groups.py)

CONTROLS = ["classical", 12.0, 0, 0.0, 0.0, 0.8]  # renderer, K, blades, rotation, highlight gain, threshold


@pytest.fixture(scope="module")
def server(tmp_path_factory, factories, ui):
    from tests.webapp.conftest import layered_scene

    out = tmp_path_factory.mktemp("app") / "out"
    callbacks = ui.Callbacks(factories, out, initial_scene=layered_scene(), preview_side=32)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    page = ui.build_app(callbacks).queue()
    page.launch(prevent_thread_lock=True, server_port=port, quiet=True,
                **launch_options("127.0.0.1", out, max_upload_mb=1))
    try:
        yield f"http://127.0.0.1:{port}", out
    finally:
        page.close()


@pytest.fixture
def callbacks_for_errors(tmp_path, factories, ui):
    from tests.webapp.conftest import layered_scene

    return ui.Callbacks(factories, tmp_path / "out", initial_scene=layered_scene(), preview_side=32)


def call(base: str, api: str, data: list) -> tuple[list, str]:
    """One call of a page event as a new session (``/gradio_api/call``): (outputs, the raw response text)."""
    event = httpx.post(f"{base}/gradio_api/call/{api}", json={"data": data}, timeout=30).json()["event_id"]
    text = httpx.get(f"{base}/gradio_api/call/{api}/{event}", timeout=30).text
    assert "event: complete" in text, text
    return json.loads(text.split("event: complete\ndata:", 1)[1].strip().splitlines()[0]), text


def test_each_session_writes_into_its_own_folder_that_no_client_can_fetch(server):
    base, out = server
    (file_a, status_a), text_a = call(base, "full_resolution", CONTROLS)
    (file_b, _), text_b = call(base, "full_resolution", ["classical", 20.0, 0, 0.0, 0.0, 0.8])
    (gif_a, _), _ = call(base, "focus_pull", CONTROLS)
    assert "full resolution written" in status_a
    written = sorted(p.relative_to(out) for p in (out / "renders").rglob("*.png"))
    assert len(written) == 2 and len({p.parent for p in written}) == 2  # renders/<token>/<name>.png, one per session
    assert all(len(p.parent.name) >= 20 for p in written)  # secrets.token_urlsafe(16): not guessable
    tokens = {p.parent.name for p in written} | {p.parent.name for p in (out / "focus_pulls").rglob("*.gif")}
    from gradio.utils import get_upload_folder

    cache = str(Path(get_upload_folder()).resolve())
    for text in (text_a, text_b):  # no server path (output folder, Gradio's cache) and no token is ever sent
        assert str(out) not in text and cache not in text and not any(token in text for token in tokens)
    assert file_a["path"].startswith(f"{CACHE_ALIAS}/") and f"file={CACHE_ALIAS}/" in file_a["url"]
    assert cache not in httpx.get(f"{base}/config").text and cache not in httpx.get(f"{base}/").text
    # A client with no session cannot fetch a render by its place in the output folder (nor the old place).
    for path in [out / p for p in written] + [out / "renders" / p.name for p in written]:
        assert httpx.get(f"{base}/gradio_api/file={path}").status_code in (403, 404)
    gif = next((out / "focus_pulls").rglob("*.gif"))
    assert httpx.get(f"{base}/gradio_api/file={gif}").status_code in (403, 404)
    # Each session gets its own copy under a content-hash folder; a's name under b's folder does not exist.
    assert file_a["path"] != file_b["path"] and gif_a["url"]
    guess = cache + "/" + file_b["path"].split("/")[1] + "/" + file_a["orig_name"]
    assert httpx.get(f"{base}/gradio_api/file={guess}").status_code in (403, 404)
    own = httpx.get(file_a["url"])  # the session's own link works
    assert own.status_code == 200 and own.content == (next(out.rglob(file_a["orig_name"]))).read_bytes()


def test_foreign_origin_and_host_are_refused_on_loopback(server):
    from gradio.utils import get_upload_folder

    base, _ = server
    files = {"files": ("x.npy", b"\x93NUMPY" + b"0" * 100, "application/octet-stream")}
    local = httpx.post(f"{base}/gradio_api/upload", files=files, headers={"Origin": base})
    assert local.status_code == 200 and local.json()[0].startswith(f"{CACHE_ALIAS}/")  # no server path
    # A client sends its uploads back as inputs by that alias, and the app reads them.
    photo, disparity = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(photo, format="PNG")
    np.save(disparity, np.tile(np.linspace(0, 1, 30, dtype=np.float32), (20, 1)))
    paths = [httpx.post(f"{base}/gradio_api/upload", headers={"Origin": base},
                        files={"files": (name, data.getvalue(), "application/octet-stream")}).json()[0]
             for name, data in (("mine.png", photo), ("mine.npy", disparity))]
    inputs = [{"path": path, "meta": {"_type": "gradio.FileData"}} for path in paths]
    outputs, text = call(base, "load_upload", [*inputs, False, "auto", *CONTROLS])
    assert "loaded mine (30x20)" in outputs[-1] and get_upload_folder() not in text
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example"):
        refused = httpx.post(f"{base}/gradio_api/upload", files=files, headers={"Origin": origin})
        assert refused.status_code == 403 and "cross-origin" in refused.text
    join = httpx.post(f"{base}/gradio_api/queue/join", headers={"Origin": "http://evil.example"},
                      json={"data": CONTROLS, "fn_index": 0, "session_hash": "abc", "trigger_id": None})
    assert join.status_code == 403
    for host in ("evil.example", "evil.example:80", "192.168.0.7"):  # DNS rebinding
        page = httpx.get(f"{base}/", headers={"Host": host})
        assert page.status_code == 403 and "loopback" in page.text
    assert httpx.get(f"{base}/", headers={"Host": "localhost"}).status_code == 200
    big = {"files": ("big.npy", b"0" * (2 * 1024 * 1024), "application/octet-stream")}
    assert httpx.post(f"{base}/gradio_api/upload", files=big, headers={"Origin": base}).status_code == 413


def test_guard_rules_and_launch_options(tmp_path, capsys, callbacks_for_errors, ui):
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("evil.example")
    shared = HostOriginGuard(None, "0.0.0.0")  # on the network: any host, but only same-origin requests
    assert shared.refusal({b"host": b"192.168.0.7:7860"}) is None
    assert shared.refusal({b"host": b"192.168.0.7:7860", b"origin": b"http://192.168.0.7:7860"}) is None
    assert "cross-origin" in shared.refusal({b"host": b"192.168.0.7", b"origin": b"http://evil.example"})
    options = launch_options("127.0.0.1", tmp_path / "out", 5)
    assert options["max_file_size"] == "5mb" and "allowed_paths" not in options  # under the temp folder
    outside = launch_options("127.0.0.1", "/nonexistent_root_dir/out")
    assert options["server_name"] == "127.0.0.1"
    assert outside["allowed_paths"] == ["/nonexistent_root_dir/out/renders", "/nonexistent_root_dir/out/focus_pulls"]
    assert ui.build_app(callbacks_for_errors).delete_cache == DELETE_CACHE  # uploads and served copies expire
    with pytest.raises(SystemExit):
        app.parse_args(["--max_upload_mb", "0"])
    assert "--max_upload_mb must be >= 1" in capsys.readouterr().err
    assert app.parse_args(["--max_upload_mb", "20"])[0].max_upload_mb == 20


def test_file_errors_on_the_page_name_no_server_folder(callbacks_for_errors, tmp_path):
    """A render that cannot be written (here: renders/ is a file) names the file, not the server's folders."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "renders").write_text("not a folder")
    _, status = callbacks_for_errors.full_resolution(None, *CONTROLS, progress=lambda *a, **k: None)
    assert status.startswith("**Error:**") and str(tmp_path) not in status
