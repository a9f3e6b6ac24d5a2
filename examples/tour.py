"""A tour of ember's eager core: tensors, views, ops and autograd.

Run with ``python examples/tour.py``; it prints what it computed.
"""

from __future__ import annotations

import ember


def main() -> None:
    ember.manual_seed(0)
    x = ember.arange(12.0).view(3, 4)
    print("x =", x.tolist())
    print("x.T strides:", x.T.strides, "contiguous:", x.T.is_contiguous())
    print(
        "x[:, ::2] =",
        x[:, ::2].tolist(),
        "(a view: shares storage",
        x[:, ::2].untyped_storage_id() == x.untyped_storage_id(),
        ")",
    )
    print("softmax rows:", [round(v, 4) for v in x.softmax(-1)[0].tolist()])

    w = ember.randn(4, 1, requires_grad=True)
    b = ember.zeros(1, requires_grad=True)
    features = x / 10.0
    target = features.sum(1, keepdim=True)
    for step in range(200):
        loss = ((features @ w + b - target) ** 2).mean()
        w.grad = b.grad = None
        loss.backward()
        with ember.no_grad():
            w.sub_(w.grad * 0.1)
            b.sub_(b.grad * 0.1)
        if step % 50 == 0:
            print(f"step {step:3d} loss {loss.item():.6f}")
    print(
        "learned w:",
        [round(v, 3) for v in w.view(-1).tolist()],
        "b:",
        round(b.item(), 3),
    )
    print("autograd:", ember.autograd.last_stats().summary())


if __name__ == "__main__":
    main()
