"""The compiled-kernel cache: in memory, and on disk under ``EMBER_CACHE_DIR``.

The key of a kernel is the sha256 of its (unoptimized) LLVM IR text together with
the host CPU name and feature string, the target triple, the llvmlite and LLVM
versions, ember's version and the code generator's version: never file times. An
entry on disk is the object code LLVM emitted for the optimized module, behind a
header::

    magic  b"EMBERKO\\0"   8 bytes
    format version         4 bytes, little endian (FORMAT_VERSION)
    payload length         8 bytes, little endian
    payload sha256         32 bytes
    payload                the object file

An entry whose header, length or hash does not check out (a torn write, a truncated
file, a bit flip, an older format) is logged, deleted and rebuilt. Writes go to a
temporary file in the same folder, are fsynced, renamed over the final name, and the
folder is fsynced, so readers never see half an entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
from typing import Any

from ember import settings
from ember.fileio import write_durably

logger = logging.getLogger("ember.compiler.cache")

MAGIC = b"EMBERKO\0"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIQ32s")

_memory: dict[str, Any] = {}
_memory_lock = threading.Lock()


def cache_key(llvm_ir: str, toolchain: str, codegen_version: int) -> str:
    """The content key of a kernel: sha256 over its IR and everything that shapes code."""
    from ember import __version__

    digest = hashlib.sha256()
    for part in (
        f"ember={__version__}",
        f"codegen={codegen_version}",
        f"format={FORMAT_VERSION}",
        toolchain,
        llvm_ir,
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


# Memory -------------------------------------------------------------------------------


def memory_get(key: str) -> Any:
    """The compiled kernel kept in memory under ``key``, or None."""
    with _memory_lock:
        return _memory.get(key)


def memory_put(key: str, value: Any) -> Any:
    """Keep ``value`` under ``key`` unless another thread was first; return the kept one."""
    with _memory_lock:
        return _memory.setdefault(key, value)


def clear_memory() -> None:
    """Forget every kernel compiled in this process (tests use it to reach the disk)."""
    with _memory_lock:
        _memory.clear()


# Disk ---------------------------------------------------------------------------------


def cache_folder() -> str:
    """The folder of kernel objects: ``<cache_dir>/kernels``."""
    return os.path.join(settings.get("cache_dir"), "kernels")


def entry_path(key: str) -> str:
    """Where the object code of ``key`` lives on disk."""
    return os.path.join(cache_folder(), key[:2], f"{key}.o")


def encode_entry(payload: bytes) -> bytes:
    """Header plus payload, as written to disk."""
    header = _HEADER.pack(
        MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest()
    )
    return header + payload


def decode_entry(blob: bytes) -> bytes | None:
    """The payload of a disk entry, or None (with the reason logged) if it is damaged."""
    if len(blob) < _HEADER.size:
        logger.info("cache entry shorter than its header (%d bytes)", len(blob))
        return None
    magic, version, length, digest = _HEADER.unpack_from(blob)
    payload = blob[_HEADER.size :]
    if magic != MAGIC or version != FORMAT_VERSION:
        logger.info(
            "cache entry has magic %r version %d, expected %r version %d",
            magic,
            version,
            MAGIC,
            FORMAT_VERSION,
        )
        return None
    if len(payload) != length:
        logger.info(
            "cache entry truncated: %d of %d payload bytes", len(payload), length
        )
        return None
    if hashlib.sha256(payload).digest() != digest:
        logger.info("cache entry payload does not match its sha256")
        return None
    return payload


def disk_get(key: str) -> bytes | None:
    """The object code stored under ``key``; a damaged entry is deleted and None returned."""
    path = entry_path(key)
    try:
        with open(path, "rb") as handle:
            blob = handle.read()
    except FileNotFoundError:
        logger.debug("miss %s", key[:16])
        return None
    except OSError as exc:
        logger.warning("cannot read cache entry %s: %s", path, exc)
        return None
    payload = decode_entry(blob)
    if payload is None:
        logger.warning("discarding damaged cache entry %s; it will be rebuilt", path)
        _remove(path)
        return None
    logger.debug("disk hit %s", key[:16])
    return payload


def disk_put(key: str, payload: bytes) -> None:
    """Store object code under ``key`` atomically; failures are logged, not raised.

    A cache that cannot be written (read-only folder, full disk) only costs the next
    process a recompile, so it must never fail the compile that produced the code.
    """
    path = entry_path(key)
    try:
        write_durably(path, encode_entry(payload))
        logger.debug("stored %s (%d bytes)", key[:16], len(payload))
    except OSError as exc:
        logger.warning("cannot write cache entry %s: %s", path, exc)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# Inspection (``ember cache info`` / ``ember cache clear``) ----------------------------


def _entries() -> list[str]:
    found: list[str] = []
    for folder, _, files in os.walk(cache_folder()):
        found.extend(os.path.join(folder, f) for f in files if f.endswith(".o"))
    return sorted(found)


def disk_info() -> dict[str, Any]:
    """The cache folder, its entry count, total bytes and how many entries are damaged."""
    entries = _entries()
    damaged = 0
    total = 0
    for path in entries:
        try:
            with open(path, "rb") as handle:
                blob = handle.read()
        except OSError:
            damaged += 1
            continue
        total += len(blob)
        damaged += decode_entry(blob) is None
    return {
        "folder": cache_folder(),
        "entries": len(entries),
        "bytes": total,
        "damaged": damaged,
        "format_version": FORMAT_VERSION,
    }


def disk_clear() -> int:
    """Delete every entry of the disk cache (and the memory cache); returns the count."""
    entries = _entries()
    for path in entries:
        _remove(path)
    clear_memory()
    return len(entries)
