"""How ``app.py`` serves the page safely: per-launch Gradio options and a Host / Origin guard.

- A page bound to a loopback address answers only requests whose ``Host`` is a loopback name (no DNS
  rebinding) and whose ``Origin``, when sent, is one too (no cross-site uploads or queue joins); bound to any
  other address, an ``Origin`` must name the same host as ``Host``. Refusals are ``403`` with the reason.
- Uploads are capped (:data:`MAX_UPLOAD_MB`) and Gradio's upload / display cache expires
  (:data:`DELETE_CACHE`, passed to ``gr.Blocks``).
- The output folder is *not* one of Gradio's allowed paths: renders reach a browser only as Gradio's cached
  copy (a folder named by a salted content hash), and each session writes under its own random token
  (``webapp.ui.Session.token``), so no client can name another session's file.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

# Largest upload (MB) the server accepts (a 24-Mpx float32 .npy map is ~96 MB).
MAX_UPLOAD_MB = 200
# Gradio's cache (uploads, displayed images, served copies of renders): every 30 min, files older than 2 h go.
DELETE_CACHE = (1800, 7200)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (``127.0.0.0/8``, ``::1``)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(authority: str) -> str:
    """``host[:port]`` or ``[v6]:port`` -> the host name, lower case, without brackets."""
    return (urlsplit(f"//{authority}").hostname or "").lower()


class HostOriginGuard:
    """ASGI middleware refusing foreign ``Host`` / ``Origin`` headers (see the module docstring).

    Args:
        app: the wrapped ASGI app (Gradio's FastAPI app).
        server_name: the address the page is bound to (``app.py --host``).
    """

    def __init__(self, app, server_name: str):
        self.app = app
        self.loopback = is_loopback(server_name)

    def refusal(self, headers: dict[bytes, bytes]) -> str | None:
        """Why a request with these headers is refused, or None when it is served."""
        host = _hostname(headers.get(b"host", b"").decode("latin-1"))
        origin = headers.get(b"origin")
        if self.loopback and not is_loopback(host):
            return f"Host '{host}' is not served: the app is bound to a loopback address (use http://127.0.0.1)"
        if origin is not None:
            origin_host = urlsplit(origin.decode("latin-1")).hostname or ""
            allowed = is_loopback(origin_host) if self.loopback else origin_host.lower() == host
            if not allowed:
                return f"cross-origin request from '{origin.decode('latin-1')}' refused"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        reason = self.refusal(dict(scope.get("headers", [])))
        if reason is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return None
        body = reason.encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return None


def launch_options(server_name: str, output_dir: str | os.PathLike, max_upload_mb: int = MAX_UPLOAD_MB) -> dict:
    """Keyword arguments of ``gr.Blocks.launch`` for ``app.py``: the bind address, the guard middleware, the
    upload cap. ``allowed_paths`` is set (to the two output folders, whose per-session token subfolders are
    never sent to a client) only where Gradio would otherwise refuse to copy a render into its cache: an
    output folder outside the working directory and the system temp folder."""
    from starlette.middleware import Middleware

    options = {"server_name": server_name, "max_file_size": f"{int(max_upload_mb)}mb",
               "app_kwargs": {"middleware": [Middleware(HostOriginGuard, server_name=server_name)]}}
    output_dir = Path(output_dir).resolve()
    if not any(output_dir.is_relative_to(Path(root).resolve()) for root in (os.getcwd(), tempfile.gettempdir())):
        options["allowed_paths"] = [str(output_dir / "renders"), str(output_dir / "focus_pulls")]
    return options
