"""ember.compile keeps a bounded number of programs and warns when it drops one."""

from __future__ import annotations

import pytest

import ember
from ember.compiler.compile import CACHE_LIMIT, RecompileLimitWarning


def test_more_signatures_than_the_cap_warn_and_keep_results_right():
    double = ember.compile(lambda x: x * 2)
    for n in range(1, CACHE_LIMIT + 1):
        assert double(ember.ones(n)).tolist() == [2.0] * n
    with pytest.warns(RecompileLimitWarning, match="more than 16 input signatures"):
        result = double(ember.ones(CACHE_LIMIT + 1))
    assert result.tolist() == [2.0] * (CACHE_LIMIT + 1)
    # The first signature was the one dropped: it is traced again, past the cap.
    with pytest.warns(RecompileLimitWarning, match="oldest program is dropped"):
        assert double(ember.ones(1)).tolist() == [2.0]
