"""``ember cache info`` and ``ember cache clear`` on a cache folder of the test's own."""

from __future__ import annotations

from pathlib import Path

from ember import settings
from ember.cli import main
from ember.compiler import cache

REPO = Path(__file__).resolve().parents[1]


def _fill_one_entry(monkeypatch, capsys) -> None:
    monkeypatch.chdir(REPO)
    cache.clear_memory()
    argv = ["dump", "examples/linear_regression.py:build", "--input", "64x8"]
    assert main([*argv, "--stage", "llvm"]) == 0
    capsys.readouterr()


def test_info_counts_entries_and_damaged_ones_and_clear_removes_them(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    with settings.override(cache_dir=str(tmp_path)):
        _fill_one_entry(monkeypatch, capsys)
        assert main(["cache", "info"]) == 0
        out = capsys.readouterr().out
        assert "entries  1 (0 damaged)" in out
        assert str(tmp_path) in out

        entry = next(Path(cache.cache_folder()).rglob("*.o"))
        entry.write_bytes(entry.read_bytes()[:-10])
        assert main(["cache", "info"]) == 0
        assert "entries  1 (1 damaged)" in capsys.readouterr().out

        assert main(["cache", "clear"]) == 0
        assert "removed 1 entries" in capsys.readouterr().out
        assert not list(Path(cache.cache_folder()).rglob("*.o"))


def test_an_unknown_cache_action_is_a_usage_error(capsys) -> None:
    try:
        main(["cache", "shrink"])
    except SystemExit as exit_:
        assert exit_.code == 2
    assert "invalid choice" in capsys.readouterr().err
