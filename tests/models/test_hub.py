"""models/hub.py: one short reachability probe; cache-only loading and one message when the hub is unreachable.

Nothing here contacts a real host: the "hub" is a local HTTP server, or a closed local port.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from models import hub


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def local_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        status = 404

        def do_HEAD(self):  # noqa: N802 - http.server's naming
            self.send_response(Handler.status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", Handler
    server.shutdown()
    server.server_close()


def test_a_closed_port_is_unreachable_within_the_timeout(monkeypatch):
    monkeypatch.setattr(hub, "_offline_env", lambda: False)
    start = time.perf_counter()
    reason = hub.hub_unreachable_reason(f"http://127.0.0.1:{closed_port()}", timeout_s=2.0)
    assert reason is not None and "Connection refused" in reason
    assert time.perf_counter() - start < 2.5


def test_any_client_answer_is_reachable_and_a_server_error_is_not(local_server, monkeypatch):
    monkeypatch.setattr(hub, "_offline_env", lambda: False)
    url, handler = local_server
    assert hub.hub_unreachable_reason(url, timeout_s=2.0) is None  # 404 at the root: the hub answers
    handler.status = 502
    assert hub.hub_unreachable_reason(url + "/proxy", timeout_s=2.0) == f"HTTP 502 from {url}/proxy"


def test_offline_env_skips_the_probe():
    # tests/conftest.py sets HF_HUB_OFFLINE=1 before huggingface_hub is imported.
    assert hub.hub_unreachable_reason("http://127.0.0.1:1") == "HF_HUB_OFFLINE is set"


def test_existing_paths_never_go_to_the_hub(tmp_path):
    assert not hub.cache_only(tmp_path)
    assert hub.local_source(str(tmp_path), "model") == str(tmp_path)


def test_uncached_hub_id_fails_at_once_with_the_download_command(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(hub.HubUnreachableError) as info:
        hub.local_source("nobody-here/no-such-model", "depth model", revision="abc123", hint="--depth_model DIR")
    message = str(info.value)
    assert "depth model 'nobody-here/no-such-model' (revision abc123) is not in the local Hugging Face cache" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert "`hf download nobody-here/no-such-model --revision abc123 --local-dir DIR`" in message
    assert message.endswith(": --depth_model DIR.")
    assert isinstance(info.value, hub.WeightsUnavailableError)


def test_a_cached_snapshot_is_loaded_as_a_local_folder(tmp_path, monkeypatch):
    """The cache layout huggingface_hub writes: refs/main holds the commit, snapshots/<commit>/ the files."""
    from huggingface_hub import constants

    repo = tmp_path / "models--someone--tiny-model"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    folder = hub.local_source("someone/tiny-model", "model")
    assert (tmp_path / folder).resolve() == (repo / "snapshots" / commit).resolve()
