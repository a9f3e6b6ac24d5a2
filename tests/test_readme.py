"""The README's Python examples run as written and do what their comments say."""

from __future__ import annotations

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_examples_run_and_loop_matches_calls_one_by_one():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    space: dict = {}
    exec(compile("\n".join(blocks), str(README), "exec"), space)
    assert space["model"][0].weight.grad is not None
    losses = space["losses"]
    assert len(losses) == len(space["batches"]) == 16
    assert all(np.isfinite(loss.item()) for loss in losses)
    # Another epoch of the same step: losses fall on this fixed data.
    step, batches = space["step"], space["batches"]
    later = [loss.item() for loss in step.loop(batches)]
    assert np.mean(later) < np.mean([loss.item() for loss in losses])
