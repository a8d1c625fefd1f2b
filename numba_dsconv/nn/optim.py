"""Optimisers (SGD with momentum, Adam) and a cosine learning-rate schedule.

An optimiser holds the model's parameters by name; ``step()`` updates every value in place from its
accumulated gradient and ``zero_grad()`` clears the gradients for the next batch. ``state_dict()`` and
``load_state_dict()`` carry the moment buffers and step count through a checkpoint.
"""

import math

import numpy as np


class Optimizer:
    """Base class: parameters by name, a learning rate, gradient zeroing and state round trips."""

    def __init__(self, parameters, lr):
        self.parameters = dict(parameters)
        if not self.parameters:
            raise ValueError("the optimiser got no parameters")
        if not lr > 0:
            raise ValueError(f"lr must be positive; got {lr}")
        self.lr = float(lr)
        self.steps = 0

    def zero_grad(self):
        """Set every gradient buffer to zero (backward passes add into them)."""
        for p in self.parameters.values():
            p.grad[...] = 0

    def step(self):
        """Update every parameter from its gradient."""
        self.steps += 1
        for name, p in self.parameters.items():
            self._update(name, p)

    def _update(self, name, p):
        raise NotImplementedError

    def _buffers(self):
        """Per-parameter state arrays, by key ``<kind>:<parameter name>``."""
        return {}

    def state_dict(self):
        """Arrays and scalars that resume this optimiser exactly."""
        return {"steps": np.int64(self.steps), "lr": np.float64(self.lr)} | self._buffers()

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` returned; shapes must match the parameters."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise ValueError(f"optimiser state lacks {missing}")
        for key, value in own.items():
            if np.shape(state[key]) != np.shape(value):
                raise ValueError(f"optimiser state {key!r} has shape {np.shape(state[key])}; "
                                 f"expected {np.shape(value)}")
        self.steps = int(state["steps"])
        self.lr = float(state["lr"])
        for key, value in self._buffers().items():
            value[...] = state[key]


class SGD(Optimizer):
    """Stochastic gradient descent with (optionally Nesterov) momentum and L2 weight decay.

    ``v = momentum * v + (g + weight_decay * w)``; ``w -= lr * v`` (or ``lr * (g + momentum * v)`` with Nesterov).
    """

    def __init__(self, parameters, lr=0.01, *, momentum=0.9, nesterov=False, weight_decay=0.0):
        super().__init__(parameters, lr)
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.velocity = {name: np.zeros_like(p.value) for name, p in self.parameters.items()}

    def _update(self, name, p):
        grad = p.grad + self.weight_decay * p.value if self.weight_decay else p.grad
        v = self.velocity[name]
        v *= self.momentum
        v += grad
        p.value -= self.lr * (grad + self.momentum * v if self.nesterov else v)

    def _buffers(self):
        return {f"velocity:{name}": v for name, v in self.velocity.items()}


class Adam(Optimizer):
    """Adam (Kingma and Ba) with bias correction; ``weight_decay`` is decoupled (AdamW)."""

    def __init__(self, parameters, lr=2e-3, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(parameters, lr)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.m = {name: np.zeros_like(p.value) for name, p in self.parameters.items()}
        self.v = {name: np.zeros_like(p.value) for name, p in self.parameters.items()}

    def _update(self, name, p):
        m, v, g = self.m[name], self.v[name], p.grad
        m *= self.beta1
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * g * g
        # PyTorch's placement of eps: added to the bias-corrected root of v.
        step_size = self.lr / (1.0 - self.beta1 ** self.steps)
        root_correction = 1.0 / math.sqrt(1.0 - self.beta2 ** self.steps)
        if self.weight_decay:
            p.value -= (self.lr * self.weight_decay) * p.value
        p.value -= step_size * m / (np.sqrt(v) * root_correction + self.eps)

    def _buffers(self):
        return {f"m:{name}": m for name, m in self.m.items()} | {f"v:{name}": v for name, v in self.v.items()}


def cosine_lr(step, total_steps, base_lr, *, warmup_steps=0, final_lr=0.0):
    """Learning rate at ``step`` (0-based): linear warm-up, then cosine decay from ``base_lr`` to ``final_lr``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * progress))
