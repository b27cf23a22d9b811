"""How ``app.py`` serves the page safely: per-launch Gradio options and a Host / Origin guard.

- A page bound to a loopback address answers only requests whose ``Host`` is a loopback name (no DNS
  rebinding) and whose ``Origin``, when sent, is one too (no cross-site uploads or queue joins); bound to any
  other address, an ``Origin`` must name the same host as ``Host``. Refusals are ``403`` with the reason.
- Uploads are capped (:data:`MAX_UPLOAD_MB`) and Gradio's upload / display cache expires
  (:data:`DELETE_CACHE`, passed to ``gr.Blocks``).
- The output folder is *not* one of Gradio's allowed paths: renders reach a browser only as Gradio's cached
  copy (a folder named by a salted content hash), and each session writes under its own random token
  (``webapp.ui.Session.token``), so no client can name another session's file.
- No server path is sent: Gradio names files by absolute path (``"path"``, ``/gradio_api/file=<path>``);
  :class:`CachePathAlias` sends its cache folder as :data:`CACHE_ALIAS` and maps the alias back on the way in.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from pathlib import Path
from urllib.parse import quote, urlsplit

# Largest upload (MB) the server accepts (a 24-Mpx float32 .npy map is ~96 MB).
MAX_UPLOAD_MB = 200
# Gradio's cache (uploads, displayed images, served copies of renders): every 30 min, files older than 2 h go.
DELETE_CACHE = (1800, 7200)
# What a client sees instead of the absolute path of Gradio's cache folder.
CACHE_ALIAS = "_cache"
# Responses whose text may hold file paths (JSON, the queue's event stream, the page, ...); others pass untouched.
TEXT_TYPES = (b"application/json", b"text/", b"application/javascript")


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


class CachePathAlias:
    """ASGI middleware hiding where Gradio's cache folder is on the server.

    Outgoing text responses have the folder's absolute path (plain and URL-quoted) replaced by
    :data:`CACHE_ALIAS`; incoming ``/file=`` routes and JSON bodies (files a client sends back as inputs, e.g.
    its uploads) have ``CACHE_ALIAS/`` mapped back to the folder. A folder whose path would need escaping in
    JSON is left as it is (the middleware then passes everything through).

    Args:
        app: the wrapped ASGI app.
        folder: Gradio's upload / cache folder (``GRADIO_TEMP_DIR``), absolute.
    """

    def __init__(self, app, folder: str | os.PathLike):
        self.app = app
        real = str(Path(folder).resolve())
        forms = {real, str(Path(folder).absolute()), str(folder)}
        self.outgoing = sorted({form.encode() for form in forms} | {quote(form, safe="/").encode() for form in forms},
                               key=len, reverse=True)
        self.real = real.encode()
        self.active = os.path.isabs(str(folder)) and not any(c in real for c in '"\\') and real.isprintable()

    def _to_real(self, data: bytes) -> bytes:
        alias = CACHE_ALIAS.encode() + b"/"
        return data.replace(b'"' + alias, b'"' + self.real + b"/").replace(b"=" + alias, b"=" + self.real + b"/")

    def _to_alias(self, data: bytes) -> bytes:
        for form in self.outgoing:
            data = data.replace(form, CACHE_ALIAS.encode())
        return data

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.active:
            return await self.app(scope, receive, send)
        scope = dict(scope)
        alias = f"file={CACHE_ALIAS}/"
        if alias in scope["path"]:
            scope["path"] = scope["path"].replace(alias, f"file={self.real.decode()}/", 1)
            scope["raw_path"] = quote(scope["path"], safe="/=").encode()
        headers = dict(scope.get("headers", []))
        if headers.get(b"content-type", b"").startswith(b"application/json"):
            body, more = b"", True
            while more:  # JSON bodies are small (event inputs); multipart uploads stream through untouched
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            body = self._to_real(body)
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-length"] + [
                (b"content-length", str(len(body)).encode())]
            sent, upstream = False, receive

            async def receive():  # noqa: F811 - the rewritten body once, then the client's own messages
                nonlocal sent
                if sent:
                    return await upstream()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

        start = None

        async def send_aliased(message):
            nonlocal start
            if message["type"] == "http.response.start":
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if not content_type.startswith(TEXT_TYPES):
                    return await send(message)
                start = message  # held until the first body part, to set its length
                return None
            if message["type"] != "http.response.body" or start is None:
                return await send(message)
            message = {**message, "body": self._to_alias(message.get("body", b""))}
            if start is not False:
                kept = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
                if not message.get("more_body", False):
                    kept.append((b"content-length", str(len(message["body"])).encode()))
                await send({**start, "headers": kept})
                start = False
            return await send(message)

        return await self.app(scope, receive, send_aliased)


def launch_options(server_name: str, output_dir: str | os.PathLike, max_upload_mb: int = MAX_UPLOAD_MB) -> dict:
    """Keyword arguments of ``gr.Blocks.launch`` for ``app.py``: the bind address, the guard and cache-alias
    middleware (Gradio's cache folder read from ``GRADIO_TEMP_DIR`` now: call after setting it), the upload cap. ``allowed_paths`` is set (to the two output folders, whose per-session token subfolders are
    never sent to a client) only where Gradio would otherwise refuse to copy a render into its cache: an
    output folder outside the working directory and the system temp folder."""
    from starlette.middleware import Middleware

    from gradio.utils import get_upload_folder

    # Listed outermost first: the guard refuses before anything else runs.
    middleware = [Middleware(HostOriginGuard, server_name=server_name),
                  Middleware(CachePathAlias, folder=Path(get_upload_folder()).resolve())]
    options = {"server_name": server_name, "max_file_size": f"{int(max_upload_mb)}mb",
               "app_kwargs": {"middleware": middleware}}
    output_dir = Path(output_dir).resolve()
    if not any(output_dir.is_relative_to(Path(root).resolve()) for root in (os.getcwd(), tempfile.gettempdir())):
        options["allowed_paths"] = [str(output_dir / "renders"), str(output_dir / "focus_pulls")]
    return options
