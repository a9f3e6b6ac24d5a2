"""Neural-network building blocks: modules, parameters, layers, losses, init.

>>> import ember
>>> from ember import nn
>>> _ = ember.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
>>> loss = nn.MSELoss()(model(ember.ones(4, 2)), ember.zeros(4, 1))
>>> loss.backward()
>>> all(p.grad is not None for p in model.parameters())
True
"""

from __future__ import annotations

from ember.nn import functional, init
from ember.nn.containers import ModuleList, Sequential
from ember.nn.layers import GELU, Identity, Linear, ReLU, Sigmoid, Tanh
from ember.nn.loss import HuberLoss, L1Loss, MSELoss
from ember.nn.module import IncompatibleKeys, Module
from ember.nn.parameter import Parameter

__all__ = [
    "GELU",
    "HuberLoss",
    "Identity",
    "IncompatibleKeys",
    "L1Loss",
    "Linear",
    "MSELoss",
    "Module",
    "ModuleList",
    "Parameter",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Tanh",
    "functional",
    "init",
]
