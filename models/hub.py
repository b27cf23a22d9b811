"""Hugging Face hub access shared by every weight loader (SDXL base, adapter, Depth Anything, BiRefNet).

Why: ``huggingface_hub`` retries an unreachable hub with exponential back-off for every file it is asked
for, so a machine without network waited 48 s (inference, data preparation) to 517 s (training: one retry
series per component) before the first useful message. Here the hub is probed once per process, with a
short timeout; when it does not answer, loaders read the local cache only (``local_files_only=True``, the
same thing ``HF_HUB_OFFLINE=1`` does) and a cache miss becomes one :class:`WeightsUnavailableError` that
says what is missing, why the hub was not asked, and how to fix it.

Public contract:

- :func:`cache_only(source)` -> ``True`` when ``source`` is a hub id (not an existing path) and the hub is
  unreachable or ``HF_HUB_OFFLINE`` is set; pass ``local_files_only=cache_only(source)`` to ``from_pretrained``
  / ``hf_hub_download``.
- :func:`local_source(source, what)` -> ``source``, or the local folder of its cached snapshot when the hub is
  unreachable; raises :class:`HubUnreachableError` at once when it is not cached.
- :func:`offline_error(source, what, hint)` -> the error to raise when such a cache-only load fails.
- :func:`download_command(repo)` -> the command that fetches ``repo`` into a local folder (``hf download``,
  the CLI of the pinned ``huggingface_hub``; ``huggingface-cli`` is no longer installed).
- :func:`check_source(source, what)` -> raises :class:`LocalPathMissingError` for a ``source`` that does not exist
  and can only be a path (a mistyped folder is said to be one, not looked up on the hub).
"""

from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request
from pathlib import Path

__all__ = [
    "HUB_PROBE_TIMEOUT_S",
    "HubUnreachableError",
    "LocalPathMissingError",
    "WeightsUnavailableError",
    "cache_only",
    "check_source",
    "download_command",
    "hub_endpoint",
    "hub_unreachable_reason",
    "local_source",
    "offline_error",
]

# One HEAD request to the endpoint: long enough for a slow but working link, short enough that an offline
# machine answers in seconds. A reachable hub answers in well under a second.
HUB_PROBE_TIMEOUT_S = 3.0


class WeightsUnavailableError(OSError):
    """Model weights could not be loaded: not a local folder, not in the local cache, and the hub unreachable
    (or a wrong id, a missing folder or a missing package). The message names the remedy."""


class HubUnreachableError(WeightsUnavailableError):
    """A hub id that is not in the local cache while the hub cannot be reached (see :func:`offline_error`)."""


class LocalPathMissingError(WeightsUnavailableError):
    """A weights source that can only be a local path (see :func:`check_source`) and does not exist."""


def looks_like_path(source: str | os.PathLike) -> bool:
    """Whether ``source`` cannot be a hub id (``name`` or ``owner/name``): absolute, ``./`` / ``../`` / ``~``
    relative, a Windows path, or deeper than ``owner/name``."""
    text = os.fspath(source)
    return text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1 or bool(Path(text).drive)


def check_source(source: str | os.PathLike, what: str) -> None:
    """Raise :class:`LocalPathMissingError` when ``source`` does not exist and :func:`looks_like_path`: a
    mistyped folder, which the hub would only answer with a misleading "not cached" / "hf download" message.

    ``what`` names the weights (and ideally the flag), e.g. ``"base model (--pretrained_model_name_or_path)"``."""
    if not Path(source).expanduser().exists() and looks_like_path(source):
        raise LocalPathMissingError(f"{what}: '{source}' does not exist. It is a path, not a Hugging Face hub id "
                                    f"(owner/name): check the path")


def hub_endpoint() -> str:
    """The hub URL ``huggingface_hub`` uses (``HF_ENDPOINT``, default ``https://huggingface.co``)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def _offline_env() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@functools.lru_cache(maxsize=None)
def _probe(endpoint: str, timeout_s: float) -> str | None:
    # The standard library's opener honours the same proxy variables (HTTPS_PROXY, NO_PROXY) as the hub client,
    # and, unlike that client, is not switched off by HF_HUB_OFFLINE (checked separately before probing).
    request = urllib.request.Request(endpoint, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as error:
        # A client error (404 at the root, 401) still means the hub answers; a server error (a proxy's 502/504
        # without upstream, a hub outage) means downloads would only be retried until they fail.
        return f"HTTP {error.code} from {endpoint}" if error.code >= 500 else None
    except (OSError, ValueError) as error:  # refused, timed out, no DNS, bad URL: unreachable, reason kept
        reason = getattr(error, "reason", error)
        return f"{type(reason).__name__}: {reason}"


def hub_unreachable_reason(endpoint: str | None = None, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """``None`` if the hub answers, else why not (``HF_HUB_OFFLINE`` set, connection refused, timeout, ...).

    The probe runs at most once per endpoint and process (a single HEAD request, ``timeout_s`` seconds at most,
    no retries)."""
    if _offline_env():
        return "HF_HUB_OFFLINE is set"
    return _probe(endpoint or hub_endpoint(), float(timeout_s))


def cache_only(source: str | os.PathLike) -> bool:
    """Whether a load of ``source`` must read the local cache only: it is not an existing path (so a hub id)
    and the hub cannot be reached."""
    if Path(source).expanduser().exists():
        return False
    return hub_unreachable_reason() is not None


def download_command(repo: str, revision: str | None = None) -> str:
    """Shell command that downloads hub repo ``repo`` into a local folder ``DIR`` (pass ``DIR`` afterwards)."""
    return f"hf download {repo}" + (f" --revision {revision}" if revision else "") + " --local-dir DIR"


def offline_error(source: str, what: str, hint: str = "", revision: str | None = None) -> HubUnreachableError:
    """The one error for a hub id that is neither cached nor reachable: what, why, and the fixes (``hint``
    names the flag that takes the local folder)."""
    from huggingface_hub import constants

    return HubUnreachableError(
        f"{what} '{source}'" + (f" (revision {revision})" if revision else "") + " is not in the local Hugging "
        f"Face cache ({constants.HF_HUB_CACHE}) and the hub ({hub_endpoint()}) is unreachable "
        f"({hub_unreachable_reason()}). Download it where the hub is reachable "
        f"(`{download_command(source, revision)}`) and pass that folder instead of the hub id"
        + (f": {hint}" if hint else "") + "."
    )


def local_source(source: str, what: str, *, revision: str | None = None, hint: str = "",
                 flag: str | None = None) -> str:
    """``source`` itself when it is an existing path or the hub is reachable; otherwise the folder of its cached
    snapshot (so the loader reads a local folder and never asks the hub), or :class:`HubUnreachableError` at
    once when it is not cached.

    Loading a cached snapshot as a folder, rather than passing ``local_files_only=True``, also covers the
    optional files a loader probes for (transformers looks for ``adapter_config.json``), each of which would
    otherwise go through its own retry series."""
    check_source(source, f"{what} ({flag})" if flag else what)  # ``flag``: the option that took ``source``
    if not cache_only(source):
        return str(source)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(str(source), revision=revision, local_files_only=True)
    except Exception as error:  # noqa: BLE001 - any cache miss (no ref, no snapshot, bad id) is "not cached"
        raise offline_error(str(source), what, hint, revision) from error
