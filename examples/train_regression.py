"""Train a small MLP on synthetic regression data with ember.nn and ember.optim.

The data come from a known function plus Gaussian noise, so the best achievable mean
squared error is known: the noise variance. The script trains with mini-batches
(the whole training step compiled to native code by ``ember.compile``; ``--backend
eager`` runs it op by op),
prints the training and validation loss after every epoch (decaying the learning
rate through the optimizer's param groups), and ends with metrics on
the validation set (MSE, the noise floor, R squared) and a save/restore check of the
model and optimizer state.

Run with the embedded defaults::

    python examples/train_regression.py

or override any of them, for example ``--epochs 40 --optimizer sgd --lr 0.05``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import ember
from ember import nn, optim


@dataclass(frozen=True)
class Config:
    """Every knob of the run, with the defaults the README shows."""

    seed: int = 0
    samples: int = 2048
    features: int = 4
    noise: float = 0.1
    validation_fraction: float = 0.25
    hidden: int = 32
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 0.01
    lr_decay: float = 0.9
    weight_decay: float = 0.0
    backend: str = "llvm"


def make_data(config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets ``sin(x @ a) + 0.5 * x @ b + noise``, all float32."""
    rng = np.random.default_rng(config.seed)
    x = rng.uniform(-2.0, 2.0, (config.samples, config.features))
    a = rng.normal(0.0, 1.0, (config.features, 1)) / np.sqrt(config.features)
    b = rng.normal(0.0, 1.0, (config.features, 1)) / np.sqrt(config.features)
    y = np.sin(x @ a * 2.0) + 0.5 * (x @ b)
    y += config.noise * rng.standard_normal(y.shape)
    return x.astype(np.float32), y.astype(np.float32)


def make_model(config: Config) -> nn.Module:
    """A two-hidden-layer MLP with tanh activations."""
    return nn.Sequential(
        nn.Linear(config.features, config.hidden),
        nn.Tanh(),
        nn.Linear(config.hidden, config.hidden),
        nn.Tanh(),
        nn.Linear(config.hidden, 1),
    )


def make_optimizer(config: Config, model: nn.Module) -> optim.Optimizer:
    """The optimizer the config names, keyed by parameter names."""
    params = model.named_parameters()
    if config.optimizer == "adam":
        return optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return optim.SGD(
            params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay
        )
    raise SystemExit(f"unknown optimizer {config.optimizer!r}: use 'adam' or 'sgd'")


def evaluate(model: nn.Module, x: ember.Tensor, y: ember.Tensor) -> float:
    """Mean squared error of ``model`` on ``(x, y)`` in eval mode, without a graph."""
    model.eval()
    with ember.no_grad():
        loss = nn.MSELoss()(model(x), y).item()
    model.train()
    return loss


def make_step(
    model: nn.Module, opt: optim.Optimizer, backend: str
) -> Callable[[ember.Tensor, ember.Tensor], ember.Tensor]:
    """One training step; compiled whole (forward, backward, update) unless eager.

    The learning rate is an input of the compiled program, so the schedule in
    ``main`` reuses it; the last, shorter batch of an epoch gets a program of its own.
    """
    loss_fn = nn.MSELoss()

    def step(x: ember.Tensor, y: ember.Tensor) -> ember.Tensor:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    if backend == "eager":
        return step
    if backend not in ("interpret", "llvm"):
        raise SystemExit(
            f"unknown backend {backend!r}: use 'llvm', 'interpret' or 'eager'"
        )
    return ember.compile(step, backend=backend)


def train_epoch(
    step: Callable[[ember.Tensor, ember.Tensor], ember.Tensor],
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
) -> float:
    """One pass over shuffled mini-batches; returns the mean batch loss.

    The data are shuffled once per epoch into a copy whose consecutive slices are
    the batches (the very batches that gathering rows ``order[start:stop]`` for
    each would give), so that a compiled step runs the epoch's calls one after
    the other in native code (``CompiledStep.loop``).
    """
    order = rng.permutation(len(x))
    xs, ys = ember.tensor(x[order]), ember.tensor(y[order])
    batches = [
        (xs[start : start + batch_size], ys[start : start + batch_size])
        for start in range(0, len(x), batch_size)
    ]
    loop = getattr(step, "loop", None)
    losses = loop(batches) if loop is not None else [step(*b) for b in batches]
    total = sum(loss.item() * xb.shape[0] for loss, (xb, _) in zip(losses, batches))
    return total / len(x)


def check_restore(
    model: nn.Module, opt: optim.Optimizer, config: Config, x: ember.Tensor
) -> bool:
    """Save model and optimizer state, rebuild both from it, compare predictions."""
    model_state = {k: v.clone() for k, v in model.state_dict().items()}
    twin = make_model(config)
    twin.load_state_dict(model_state)
    make_optimizer(config, twin).load_state_dict(opt.state_dict())
    with ember.no_grad():
        return bool(np.array_equal(twin(x).numpy(), model(x).numpy()))


def main(config: Config) -> None:
    ember.manual_seed(config.seed)
    x, y = make_data(config)
    split = int(len(x) * (1 - config.validation_fraction))
    x_val, y_val = ember.tensor(x[split:]), ember.tensor(y[split:])
    model = make_model(config)
    opt = make_optimizer(config, model)
    rng = np.random.default_rng(config.seed + 1)
    step = make_step(model, opt, config.backend)
    print(model)
    print(
        f"{sum(p.numel() for p in model.parameters())} parameters, "
        f"{split} training and {len(x) - split} validation samples"
    )

    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        train_loss = train_epoch(step, x[:split], y[:split], config.batch_size, rng)
        val_loss = evaluate(model, x_val, y_val)
        print(
            f"epoch {epoch:3d}  train loss {train_loss:.5f}  val loss {val_loss:.5f}"
            f"  lr {opt.param_groups[0]['lr']:.5f}"
        )
        for group in opt.param_groups:  # a step schedule: decay after every epoch
            group["lr"] *= config.lr_decay
    seconds = time.perf_counter() - started

    val_mse = evaluate(model, x_val, y_val)
    variance = float(np.var(y[split:]))
    print(
        f"validation MSE {val_mse:.5f} (noise floor {config.noise**2:.5f}), "
        f"R^2 {1 - val_mse / variance:.4f}"
    )
    print(f"state restored exactly: {check_restore(model, opt, config, x_val)}")
    print(
        f"trained {config.epochs} epochs in {seconds:.2f} s "
        f"({config.backend}{'' if config.backend == 'eager' else ', compiles included'})"
    )


def parse_args() -> Config:
    """A Config with any field overridden from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for field in dataclasses.fields(Config):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(field.default),
            default=field.default,
            help=f"default {field.default}",
        )
    return Config(**vars(parser.parse_args()))


if __name__ == "__main__":
    main(parse_args())
