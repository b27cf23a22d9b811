"""A full disk, recognised however the writer reports it, and said in one sentence that names the folder.

Writers report a full device differently: ``OSError`` with ``errno`` ENOSPC / EDQUOT (``open``, ``write``,
``os.replace``); numpy's ``tofile`` an ``OSError`` without errno ("884326 requested and 794624 written"); torch's
zip writer a ``RuntimeError`` ("[enforce fail at inline_container.cc:672] . unexpected pos ..."); safetensors a
``SafetensorError`` ("I/O error: No space left on device (os error 28)"). Messages as measured on a full tmpfs.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

__all__ = ["DiskFullError", "disk_full_error", "is_disk_full"]

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_MESSAGES = ("inline_container", "unexpected pos", "file write failed", "No space left on device",
                      "Disk quota exceeded")
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile on a full device


class DiskFullError(OSError):
    """The device holding an output folder is full (or the user's quota is spent); the message names the
    folder, what was being written and what is free. ``errno`` is ENOSPC."""


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a writer's way of saying the device is full (see the module docstring)."""
    if isinstance(error, DiskFullError):
        return True
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    text = str(error)
    return bool(_SHORT_WRITE.search(text)) or any(message in text for message in DISK_FULL_MESSAGES)


def disk_full_error(error: BaseException, path: str | os.PathLike) -> DiskFullError:
    """A :class:`DiskFullError` for ``error`` raised while writing ``path``: "no space left on the device
    holding '<folder>' while writing '<name>' (N MiB free; <the writer's words>)"."""
    path = Path(path)
    folder = path.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    detail = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}" if str(error) else type(error).__name__
    return DiskFullError(errno.ENOSPC, f"no space left on the device holding '{folder}' while writing "
                                       f"'{path.name}' ({free}; {detail})")
