"""Small models that fail in the ways users meet most; tests/test_golden.py pins the
message each one produces under ``ember dump``. Keep line numbers stable: the golden
files quote them."""

import ember


def trace_error(x):
    """Branches on a tensor value, which tracing cannot record."""
    if x.sum() > 0:
        return x.relu()
    return -x


def stride_error(x):
    """Views a transposed tensor as flat: its strides cannot express that shape."""
    flat = x.T.view(-1)
    return flat * 2


def layout_error(x):
    """Writes into an expanded tensor, whose elements share memory."""
    rows = (x * 2).expand(3, *x.shape)
    rows.add_(ember.ones(3, *x.shape))
    return rows
