"""Durable file writes: every file ember writes goes through here.

A write goes to a temporary file in the target folder, is flushed and fsynced, renamed
over the target, and then the folder itself is fsynced, so a crash leaves either the
old file or the new one, never a torn mix (design.md decision 8).
"""

from __future__ import annotations

import os
import tempfile


def write_durably(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the folder."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    folder_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


def write_text_durably(path: str, text: str) -> None:
    """:func:`write_durably` for UTF-8 text."""
    write_durably(path, text.encode("utf-8"))
