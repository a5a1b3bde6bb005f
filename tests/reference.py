"""Float64 NumPy reference optimizers, written from the published update rules.

These follow the algorithm boxes of the ``torch.optim`` documentation (SGD, Adam, AdamW),
not fastopt's C++: every quantity is kept in float64 and updated in place, so a test can
compare fastopt's fp32 arithmetic against a (nearly) exact trajectory.

Each optimizer is a small class holding its hyperparameters and per-param state::

    ref = SGDRef(lr=0.1, momentum=0.9)
    ref.step(params, grads)        # params: list of float64 arrays, updated in place

``lr`` (like every hyperparameter) is a plain attribute and may be changed between steps.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _as_f64_pair(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The grad as a float64 ndarray (never a NumPy scalar, even for 0-d params)."""
    if not isinstance(p, np.ndarray) or p.dtype != np.float64:
        raise TypeError(f"reference params must be float64 arrays, got {p.dtype}")
    if p.shape != np.shape(g):
        raise ValueError(f"grad shape {np.shape(g)} differs from param shape {p.shape}")
    return np.array(g, dtype=np.float64)


class SGDRef:
    """torch.optim.SGD: for each param, with g the gradient::

        g <- -g                                  if maximize
        g <- g + weight_decay * p                if weight_decay != 0
        if momentum != 0:
            b <- g                               at the first step
            b <- momentum * b + (1 - dampening) * g   afterwards
            g <- g + momentum * b if nesterov else b
        p <- p - lr * g
    """

    def __init__(self, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov requires momentum > 0 and dampening = 0")
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov, self.maximize = weight_decay, nesterov, maximize
        self.momentum_buffer: dict[int, np.ndarray] = {}

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        for i, (p, g) in enumerate(zip(params, grads)):
            g = _as_f64_pair(p, g)
            g = -g if self.maximize else g.copy()
            if self.weight_decay != 0:
                g = g + self.weight_decay * p
            if self.momentum != 0:
                if i not in self.momentum_buffer:
                    self.momentum_buffer[i] = np.array(g, dtype=np.float64)
                else:
                    buf = self.momentum_buffer[i]
                    buf[...] = self.momentum * buf + (1.0 - self.dampening) * g
                buf = self.momentum_buffer[i]
                g = g + self.momentum * buf if self.nesterov else buf
            p -= self.lr * g


class AdamRef:
    """torch.optim.Adam (``decoupled=False``) and torch.optim.AdamW (``decoupled=True``).

    At step t (1-based), for each param with gradient g::

        g <- -g                                   if maximize
        p <- p * (1 - lr * weight_decay)          AdamW (decoupled decay)
        g <- g + weight_decay * p                 Adam  (L2 penalty)
        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g^2
        m_hat <- m / (1 - beta1^t)
        if amsgrad: v_max <- max(v_max, v); v_hat <- v_max / (1 - beta2^t)
        else:       v_hat <- v / (1 - beta2^t)
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)
    """

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float | None = None, amsgrad: bool = False,
                 maximize: bool = False, decoupled: bool = False):
        if weight_decay is None:
            weight_decay = 1e-2 if decoupled else 0.0  # the torch defaults
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.amsgrad, self.maximize, self.decoupled = amsgrad, maximize, decoupled
        self.t = 0
        self.exp_avg: dict[int, np.ndarray] = {}
        self.exp_avg_sq: dict[int, np.ndarray] = {}
        self.max_exp_avg_sq: dict[int, np.ndarray] = {}

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        self.t += 1
        beta1, beta2 = self.betas
        bias1 = 1.0 - beta1 ** self.t
        bias2 = 1.0 - beta2 ** self.t
        for i, (p, g) in enumerate(zip(params, grads)):
            g = _as_f64_pair(p, g)
            g = -g if self.maximize else g.copy()
            if self.weight_decay != 0:
                if self.decoupled:
                    p *= 1.0 - self.lr * self.weight_decay
                else:
                    g = g + self.weight_decay * p
            m = self.exp_avg.setdefault(i, np.zeros_like(p))
            v = self.exp_avg_sq.setdefault(i, np.zeros_like(p))
            m[...] = beta1 * m + (1.0 - beta1) * g
            v[...] = beta2 * v + (1.0 - beta2) * g * g
            if self.amsgrad:
                vmax = self.max_exp_avg_sq.setdefault(i, np.zeros_like(p))
                np.maximum(vmax, v, out=vmax)
                v_hat = vmax / bias2
            else:
                v_hat = v / bias2
            m_hat = m / bias1
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def state_of(self, i: int) -> dict[str, np.ndarray]:
        """Param i's state under torch's names."""
        out = {"exp_avg": self.exp_avg[i], "exp_avg_sq": self.exp_avg_sq[i]}
        if self.amsgrad:
            out["max_exp_avg_sq"] = self.max_exp_avg_sq[i]
        return out


class AdamWRef(AdamRef):
    """torch.optim.AdamW: Adam with decoupled weight decay (default 1e-2)."""

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False,
                 maximize: bool = False):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, maximize, decoupled=True)


def reference_for(optimizer_name: str, kwargs: dict) -> SGDRef | AdamRef:
    """A fresh reference optimizer: ``optimizer_name`` is "SGD", "Adam" or "AdamW"."""
    cls = {"SGD": SGDRef, "Adam": AdamRef, "AdamW": AdamWRef}[optimizer_name]
    return cls(**kwargs)
