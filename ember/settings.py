"""One typed registry for every environment knob ember reads.

Each setting has a name, the environment variable behind it, a type, a default and a
line of documentation. Code reads settings through :func:`get`; nothing else in ember
reads ``os.environ``. Tests override settings with :func:`override`::

    >>> with override(dump_dir="/tmp/dumps"):
    ...     get("dump_dir")
    '/tmp/dumps'

``EMBER_LOG`` names logging topics separated by commas (``EMBER_LOG=autograd,cache``);
``EMBER_LOG=all`` switches on every topic. :func:`configure_logging` applies it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ember.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    """A named knob: its environment variable, how to parse it, its default."""

    name: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    doc: str


def _parse_topics(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "ember")


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting(
            "log", "EMBER_LOG", _parse_topics, (), "logging topics, comma separated"
        ),
        Setting(
            "dump_dir", "EMBER_DUMP_DIR", str, None, "write IR after every stage here"
        ),
        Setting(
            "cache_dir",
            "EMBER_CACHE_DIR",
            str,
            None,
            "compiled-kernel disk cache (default: the user's cache folder)",
        ),
        Setting(
            "verify_passes",
            "EMBER_VERIFY",
            _parse_bool,
            False,
            "verify the graph after every compiler pass",
        ),
        Setting(
            "concurrent_products",
            "EMBER_CONCURRENT",
            _parse_bool,
            True,
            "run independent large matrix products of a program on two threads",
        ),
        Setting(
            "streamed_passes",
            "EMBER_STREAM",
            _parse_bool,
            True,
            "read a linear layer's batch once for its product, pointwise kernels "
            "and weight gradient",
        ),
    ]
}

#: Topic name -> logger names it switches on.
LOG_TOPICS: dict[str, tuple[str, ...]] = {
    "autograd": ("ember.runtime.autograd",),
    "dispatch": ("ember.runtime.eager", "ember.ir.dispatch"),
    "trace": ("ember.compiler.trace",),
    "passes": ("ember.compiler.passes",),
    "fusion": ("ember.compiler.fusion",),
    "codegen": ("ember.compiler.codegen",),
    "cache": ("ember.compiler.cache",),
    "recompile": ("ember.compiler.compile",),
}

_overrides: list[dict[str, Any]] = []


def get(name: str) -> Any:
    """The current value of a setting: an override, the environment, or the default."""
    setting = SETTINGS.get(name)
    if setting is None:
        raise ConfigError(
            f"unknown setting {name!r}",
            expected=sorted(SETTINGS),
            actual=name,
            hint="use one of the documented setting names",
        )
    for layer in reversed(_overrides):
        if name in layer:
            return layer[name]
    raw = os.environ.get(setting.env)
    if raw is None:
        if name == "cache_dir":
            return _default_cache_dir()
        return setting.default
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(
            f"environment variable {setting.env}={raw!r} is not valid: {exc}",
            hint=f"{setting.env}: {setting.doc}",
        ) from None


@contextlib.contextmanager
def override(**values: Any) -> Iterator[None]:
    """Override settings inside a ``with`` block (used by tests)."""
    for name in values:
        if name not in SETTINGS:
            raise ConfigError(f"unknown setting {name!r}", expected=sorted(SETTINGS))
    _overrides.append(values)
    try:
        yield
    finally:
        _overrides.remove(values)


def configure_logging() -> None:
    """Switch on the DEBUG loggers for the topics named in ``EMBER_LOG``."""
    topics = get("log")
    if not topics:
        return
    names = set(LOG_TOPICS) if "all" in topics else set(topics)
    unknown = names - set(LOG_TOPICS)
    if unknown:
        raise ConfigError(
            f"EMBER_LOG names unknown topics {sorted(unknown)}",
            expected=sorted(LOG_TOPICS),
            actual=sorted(unknown),
        )
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    for topic in sorted(names):
        for logger_name in LOG_TOPICS[topic]:
            logger = logging.getLogger(logger_name)
            logger.setLevel(logging.DEBUG)
            if not logger.handlers:
                logger.addHandler(handler)
