"""Optimizers: ``SGD``, ``Adam`` and ``AdamW`` over named or unnamed parameters.

>>> import ember
>>> from ember import nn, optim
>>> _ = ember.manual_seed(0)
>>> model = nn.Linear(3, 1)
>>> opt = optim.Adam(model.named_parameters(), lr=0.01)
>>> for _ in range(3):
...     opt.zero_grad()
...     nn.MSELoss()(model(ember.ones(8, 3)), ember.zeros(8, 1)).backward()
...     opt.step()
>>> opt.state_dict()["state"]["weight"]["step"]
3
"""

from __future__ import annotations

from ember.optim.adam import Adam, AdamW
from ember.optim.optimizer import FORMAT_VERSION, Optimizer
from ember.optim.sgd import SGD

__all__ = ["FORMAT_VERSION", "SGD", "Adam", "AdamW", "Optimizer"]
