"""Golden files of the ``backward`` stage for small models that each exercise one
rule: a value shared by three paths, a recomputed pointwise value with a broadcast
bias, and strided views of an input. The example models' backward dumps are pinned
with every other stage by ``test_golden.py``.

``pytest --update-golden`` rewrites the files (review the diff before committing).
"""

from __future__ import annotations

import pytest

from tests.test_golden import GOLDEN, check_golden, dump

MODELS = "tests/golden/backward/backward_models.py"

#: Case -> (title, input specs).
CASES = {
    "SharedHidden": ("a hidden value read on three paths", ["3x6"]),
    "GatedUnit": ("a sigmoid recomputed in backward, a broadcast bias", ["4x6"]),
    "StridedInput": ("parameter gradients through strided views of an input", ["6x4"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_backward_dumps_match_their_golden_files(
    case, monkeypatch, capsys, update_golden
):
    title, specs = CASES[case]
    argv = ["dump", f"{MODELS}:{case}", "--stage", "backward"]
    for spec in specs:
        argv += ["--input", spec]
    status, body = dump(monkeypatch, capsys, argv)
    assert status == 0, body
    check_golden(GOLDEN / "backward" / f"{case}.txt", title, argv, body, update_golden)
