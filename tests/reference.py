"""Float64 NumPy reference optimizers, written from the published update rules.

These follow the algorithm boxes of the ``torch.optim`` documentation (SGD, Adam, AdamW,
Adagrad, Adadelta, RMSprop, Adamax, NAdam, RAdam, Adafactor) and, for the optimizers torch
lacks, the papers (AdaBelief: Zhuang et al. 2020, Algorithm 2; Lion: Chen et al. 2023, Program
1; Sophia: Liu et al. 2023, Algorithm 3; the Sutskever et al. 2013 momentum form of SGD;
Schedule-Free: Defazio et al. 2024, as its authors' code steps it), not fastopt's C++: every
quantity is kept in float64 and updated in place, so a test can compare fastopt's fp32
arithmetic against a (nearly) exact trajectory.

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
    """torch.optim.SGD (``momentum_form="torch"``): for each param, with g the gradient::

        g <- -g                                  if maximize
        g <- g + weight_decay * p                if weight_decay != 0
        if momentum != 0:
            b <- g                               at the first step
            b <- momentum * b + (1 - dampening) * g   afterwards
            g <- g + momentum * b if nesterov else b
        p <- p - lr * g

    ``momentum_form="sutskever"`` (Sutskever et al. 2013, section 2; Keras's SGD), with the
    same g and a velocity v that starts at zero::

        v <- momentum * v - lr * g
        p <- p + momentum * v - lr * g if nesterov else p + v
    """

    def __init__(self, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False,
                 momentum_form: str = "torch"):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov requires momentum > 0 and dampening = 0")
        if momentum_form not in ("torch", "sutskever") or (momentum_form == "sutskever" and dampening != 0):
            raise ValueError(f"bad momentum_form {momentum_form!r} (or dampening with it)")
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.weight_decay, self.nesterov, self.maximize = weight_decay, nesterov, maximize
        self.sutskever = momentum_form == "sutskever"
        self.momentum_buffer: dict[int, np.ndarray] = {}

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        for i, (p, g) in enumerate(zip(params, grads)):
            g = _as_f64_pair(p, g)
            g = -g if self.maximize else g.copy()
            if self.weight_decay != 0:
                g = g + self.weight_decay * p
            if self.momentum != 0 and self.sutskever:
                v = self.momentum_buffer.setdefault(i, np.zeros_like(p))
                v[...] = self.momentum * v - self.lr * g
                p += self.momentum * v - self.lr * g if self.nesterov else v
                continue
            if self.momentum != 0:
                if i not in self.momentum_buffer:
                    self.momentum_buffer[i] = np.array(g, dtype=np.float64)
                else:
                    buf = self.momentum_buffer[i]
                    buf[...] = self.momentum * buf + (1.0 - self.dampening) * g
                buf = self.momentum_buffer[i]
                g = g + self.momentum * buf if self.nesterov else buf
            p -= self.lr * g

    def state_of(self, i: int) -> dict[str, np.ndarray]:
        buf = self.momentum_buffer.get(i)
        return {} if buf is None else {"momentum_buffer": buf}


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


class _Ref:
    """Per-param float64 state arrays by name, created at zero (or ``initial``) on first use."""

    initial = 0.0

    def __init__(self, maximize: bool):
        self.maximize = maximize
        self.t = 0
        self.states: dict[str, dict[int, np.ndarray]] = {}

    def buf(self, name: str, i: int, p: np.ndarray) -> np.ndarray:
        return self.states.setdefault(name, {}).setdefault(i, np.full_like(p, self.initial))

    def grad(self, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        g = _as_f64_pair(p, g)
        return -g if self.maximize else g

    def state_of(self, i: int) -> dict[str, np.ndarray]:
        """Param i's state under fastopt's (and torch's) names (those it has: Adafactor's
        matrices and vectors keep different state)."""
        return {name: d[i] for name, d in self.states.items() if i in d}


class AdagradRef(_Ref):
    """torch.optim.Adagrad. At step t (1-based)::

        g <- -g if maximize;  g <- g + weight_decay * p
        sum <- sum + g^2                          (sum starts at initial_accumulator_value)
        p <- p - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)
    """

    def __init__(self, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, maximize: bool = False):
        super().__init__(maximize)
        self.lr, self.lr_decay, self.weight_decay, self.eps = lr, lr_decay, weight_decay, eps
        self.initial = initial_accumulator_value

    def step(self, params, grads) -> None:
        self.t += 1
        clr = self.lr / (1 + (self.t - 1) * self.lr_decay)
        for i, (p, g) in enumerate(zip(params, grads)):
            g = self.grad(p, g) + self.weight_decay * p
            s = self.buf("sum", i, p)
            s += g * g
            p -= clr * g / (np.sqrt(s) + self.eps)


class AdadeltaRef(_Ref):
    """torch.optim.Adadelta::

        g <- -g if maximize;  g <- g + weight_decay * p
        v <- rho * v + (1 - rho) * g^2
        delta <- sqrt(u + eps) / sqrt(v + eps) * g
        u <- rho * u + (1 - rho) * delta^2
        p <- p - lr * delta
    """

    def __init__(self, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0,
                 maximize: bool = False):
        super().__init__(maximize)
        self.lr, self.rho, self.eps, self.weight_decay = lr, rho, eps, weight_decay

    def step(self, params, grads) -> None:
        rho, eps = self.rho, self.eps
        for i, (p, g) in enumerate(zip(params, grads)):
            g = self.grad(p, g) + self.weight_decay * p
            v, u = self.buf("square_avg", i, p), self.buf("acc_delta", i, p)
            v[...] = rho * v + (1 - rho) * g * g
            delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
            u[...] = rho * u + (1 - rho) * delta * delta
            p -= self.lr * delta


class RMSpropRef(_Ref):
    """torch.optim.RMSprop::

        g <- -g if maximize;  g <- g + weight_decay * p
        v <- alpha * v + (1 - alpha) * g^2
        if centered: a <- alpha * a + (1 - alpha) * g;  avg <- sqrt(v - a^2) + eps
        else:        avg <- sqrt(v) + eps
        if momentum > 0: b <- momentum * b + g / avg;  p <- p - lr * b
        else:            p <- p - lr * g / avg
    """

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, maximize: bool = False):
        super().__init__(maximize)
        self.lr, self.alpha, self.eps, self.weight_decay = lr, alpha, eps, weight_decay
        self.momentum, self.centered = momentum, centered

    def step(self, params, grads) -> None:
        alpha = self.alpha
        for i, (p, g) in enumerate(zip(params, grads)):
            g = self.grad(p, g) + self.weight_decay * p
            v = self.buf("square_avg", i, p)
            v[...] = alpha * v + (1 - alpha) * g * g
            if self.centered:
                a = self.buf("grad_avg", i, p)
                a[...] = alpha * a + (1 - alpha) * g
                avg = np.sqrt(v - a * a) + self.eps
            else:
                avg = np.sqrt(v) + self.eps
            if self.momentum > 0:
                b = self.buf("momentum_buffer", i, p)
                b[...] = self.momentum * b + g / avg
                p -= self.lr * b
            else:
                p -= self.lr * g / avg


class AdamaxRef(_Ref):
    """torch.optim.Adamax. At step t (1-based)::

        g <- -g if maximize;  g <- g + weight_decay * p
        m <- beta1 * m + (1 - beta1) * g
        u <- max(beta2 * u, |g| + eps)
        p <- p - lr / (1 - beta1^t) * m / u
    """

    def __init__(self, lr: float = 2e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 maximize: bool = False):
        super().__init__(maximize)
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay

    def step(self, params, grads) -> None:
        self.t += 1
        beta1, beta2 = self.betas
        for i, (p, g) in enumerate(zip(params, grads)):
            g = self.grad(p, g) + self.weight_decay * p
            m, u = self.buf("exp_avg", i, p), self.buf("exp_inf", i, p)
            m[...] = beta1 * m + (1 - beta1) * g
            u[...] = np.maximum(beta2 * u, np.abs(g) + self.eps)
            p -= self.lr / (1 - beta1 ** self.t) * m / u


class _AdamLike(_Ref):
    """The shared front of NAdam, RAdam and AdaBelief: maximize, then decoupled decay of the
    param or an L2 term in the grad."""

    def __init__(self, lr, betas, eps, weight_decay, decoupled, maximize):
        super().__init__(maximize)
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.decoupled = decoupled

    def decayed_grad(self, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        g = self.grad(p, g)
        if self.decoupled:
            p *= 1 - self.lr * self.weight_decay
            return g
        return g + self.weight_decay * p


class NAdamRef(_AdamLike):
    """torch.optim.NAdam. At step t (1-based), with the running product mu_product kept as
    torch keeps it::

        mu_t <- beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))
        mu_next <- beta1 * (1 - 0.5 * 0.96^((t + 1) * momentum_decay))
        mu_product <- mu_product * mu_t
        g <- -g if maximize;  decoupled: p <- p * (1 - lr * wd), else g <- g + wd * p
        m <- beta1 * m + (1 - beta1) * g;  v <- beta2 * v + (1 - beta2) * g^2
        d <- sqrt(v / (1 - beta2^t)) + eps
        p <- p - lr * (1 - mu_t) / (1 - mu_product) * g / d
               - lr * mu_next / (1 - mu_product * mu_next) * m / d
    """

    def __init__(self, lr: float = 2e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, maximize: bool = False):
        super().__init__(lr, betas, eps, weight_decay, decoupled_weight_decay, maximize)
        self.momentum_decay = momentum_decay
        self.mu_product = 1.0

    def step(self, params, grads) -> None:
        self.t += 1
        beta1, beta2 = self.betas
        mu = beta1 * (1 - 0.5 * 0.96 ** (self.t * self.momentum_decay))
        mu_next = beta1 * (1 - 0.5 * 0.96 ** ((self.t + 1) * self.momentum_decay))
        self.mu_product *= mu
        for i, (p, g) in enumerate(zip(params, grads)):
            g = self.decayed_grad(p, g)
            m, v = self.buf("exp_avg", i, p), self.buf("exp_avg_sq", i, p)
            m[...] = beta1 * m + (1 - beta1) * g
            v[...] = beta2 * v + (1 - beta2) * g * g
            d = np.sqrt(v / (1 - beta2 ** self.t)) + self.eps
            p -= self.lr * (1 - mu) / (1 - self.mu_product) * g / d
            p -= self.lr * mu_next / (1 - self.mu_product * mu_next) * m / d


class RAdamRef(_AdamLike):
    """torch.optim.RAdam. At step t (1-based)::

        g <- -g if maximize;  decoupled: p <- p * (1 - lr * wd), else g <- g + wd * p
        m <- beta1 * m + (1 - beta1) * g;  v <- beta2 * v + (1 - beta2) * g^2
        m_hat <- m / (1 - beta1^t)
        rho_inf <- 2 / (1 - beta2) - 1;  rho_t <- rho_inf - 2 t beta2^t / (1 - beta2^t)
        if rho_t > 5:
            r <- sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
            p <- p - lr * m_hat * r * sqrt(1 - beta2^t) / (sqrt(v) + eps)
        else:
            p <- p - lr * m_hat
    """

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 decoupled_weight_decay: bool = False, maximize: bool = False):
        super().__init__(lr, betas, eps, weight_decay, decoupled_weight_decay, maximize)

    def rectified(self) -> bool:
        """Whether step t used the rectified (adaptive) update."""
        return self.rho_t() > 5

    def rho_t(self) -> float:
        beta2, t = self.betas[1], self.t
        rho_inf = 2 / (1 - beta2) - 1
        return rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)

    def step(self, params, grads) -> None:
        self.t += 1
        beta1, beta2 = self.betas
        rho_inf, rho_t = 2 / (1 - beta2) - 1, self.rho_t()
        for i, (p, g) in enumerate(zip(params, grads)):
            g = self.decayed_grad(p, g)
            m, v = self.buf("exp_avg", i, p), self.buf("exp_avg_sq", i, p)
            m[...] = beta1 * m + (1 - beta1) * g
            v[...] = beta2 * v + (1 - beta2) * g * g
            m_hat = m / (1 - beta1 ** self.t)
            if rho_t > 5:
                r = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                p -= self.lr * m_hat * r * np.sqrt(1 - beta2 ** self.t) / (np.sqrt(v) + self.eps)
            else:
                p -= self.lr * m_hat


class AdaBeliefRef(_AdamLike):
    """AdaBelief, Zhuang et al. 2020, Algorithm 2 (plus the options). At step t (1-based)::

        g <- -g if maximize;  weight_decouple: p <- p * (1 - lr * wd), else g <- g + wd * p
        m <- beta1 * m + (1 - beta1) * g
        s <- beta2 * s + (1 - beta2) * (g - m)^2 + eps
        amsgrad: s_max <- max(s_max, s), used in place of s below
        m_hat <- m / (1 - beta1^t);  s_hat <- s / (1 - beta2^t)
        p <- p - lr * m_hat / (sqrt(s_hat) + eps)
    """

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-16, weight_decay: float = 0.0,
                 amsgrad: bool = False, weight_decouple: bool = False, maximize: bool = False):
        super().__init__(lr, betas, eps, weight_decay, weight_decouple, maximize)
        self.amsgrad = amsgrad

    def step(self, params, grads) -> None:
        self.t += 1
        beta1, beta2 = self.betas
        for i, (p, g) in enumerate(zip(params, grads)):
            g = self.decayed_grad(p, g)
            m, s = self.buf("exp_avg", i, p), self.buf("exp_avg_var", i, p)
            m[...] = beta1 * m + (1 - beta1) * g
            s[...] = beta2 * s + (1 - beta2) * (g - m) ** 2 + self.eps
            if self.amsgrad:
                smax = self.buf("max_exp_avg_var", i, p)
                np.maximum(smax, s, out=smax)
                s = smax
            m_hat, s_hat = m / (1 - beta1 ** self.t), s / (1 - beta2 ** self.t)
            p -= self.lr * m_hat / (np.sqrt(s_hat) + self.eps)


class LionRef(_Ref):
    """Lion, Chen et al. 2023, Program 1 (plus maximize)::

        g <- -g if maximize
        c <- beta1 * m + (1 - beta1) * g
        p <- p * (1 - lr * weight_decay) - lr * sign(c)
        m <- beta2 * m + (1 - beta2) * g

    Where |c| is within fp32 rounding of 0 (relative to its two terms), its sign is a toss-up
    for any fp32 implementation, and the param may end up 2 lr away from the reference:
    ``ambiguous[i]`` counts such steps per element of param i, for the tests' tolerance.
    """

    def __init__(self, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0, maximize: bool = False):
        super().__init__(maximize)
        self.lr, self.betas, self.weight_decay = lr, tuple(betas), weight_decay
        self.ambiguous: dict[int, np.ndarray] = {}

    def step(self, params, grads) -> None:
        beta1, beta2 = self.betas
        for i, (p, g) in enumerate(zip(params, grads)):
            g = self.grad(p, g)
            m = self.buf("exp_avg", i, p)
            c = beta1 * m + (1 - beta1) * g
            scale = np.abs(beta1 * m) + np.abs((1 - beta1) * g)
            counts = self.ambiguous.setdefault(i, np.zeros(p.shape, np.int64))
            counts += np.abs(c) <= 2.0 ** -20 * scale
            p *= 1 - self.lr * self.weight_decay
            p -= self.lr * np.sign(c)
            m[...] = beta2 * m + (1 - beta2) * g


class LARSRef(_Ref):
    """LARS, You, Gitman & Ginsburg 2017, Algorithm 1 (plus maximize), per tensor::

        g <- -g if maximize
        local <- eta * ||p|| / (||g|| + weight_decay * ||p|| + eps)
                 (1 if ||p|| or the denominator is 0)
        (exclude_1d and p.ndim <= 1: local <- 1 and no weight decay)
        v <- momentum * v + lr * local * (g + weight_decay * p);   p <- p - v
    """

    def __init__(self, lr=1e-3, momentum=0.9, weight_decay=0.0, trust_coefficient=1e-3, eps=1e-8,
                 exclude_1d=False, maximize=False):
        super().__init__(maximize)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.trust_coefficient, self.eps, self.exclude_1d = trust_coefficient, eps, exclude_1d

    def step(self, params, grads) -> None:
        for i, (p, g) in enumerate(zip(params, grads)):
            g = self.grad(p, g)
            wd = 0.0 if self.exclude_1d and p.ndim <= 1 else self.weight_decay
            pn, gn = np.linalg.norm(p), np.linalg.norm(g)
            denom = gn + wd * pn + self.eps
            if self.exclude_1d and p.ndim <= 1 or not (pn > 0 and denom > 0):
                local = 1.0
            else:
                local = self.trust_coefficient * pn / denom
            d = self.lr * local * (g + wd * p)
            if self.momentum != 0:
                v = self.buf("momentum_buffer", i, p)
                v[...] = self.momentum * v + d
                d = v
            p -= d


class LAMBRef(_Ref):
    """LAMB, You et al. 2019, Algorithm 2 (decoupled weight decay, plus maximize), per tensor::

        g <- -g if maximize
        m <- beta1 * m + (1 - beta1) * g;   v <- beta2 * v + (1 - beta2) * g^2
        u <- (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + weight_decay * p
             (no division by 1 - beta^t without bias_correction)
        ratio <- ||p|| / ||u||  (1 if a norm is 0; at most max_trust when max_trust > 0)
        p <- p - lr * ratio * u
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, max_trust=0.0,
                 bias_correction=True, maximize=False):
        super().__init__(maximize)
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.max_trust, self.bias_correction = max_trust, bias_correction

    def step(self, params, grads) -> None:
        self.t += 1
        b1, b2 = self.betas
        bc1 = 1 - b1 ** self.t if self.bias_correction else 1.0
        bc2 = 1 - b2 ** self.t if self.bias_correction else 1.0
        for i, (p, g) in enumerate(zip(params, grads)):
            g = self.grad(p, g)
            m, v = self.buf("exp_avg", i, p), self.buf("exp_avg_sq", i, p)
            m[...] = b1 * m + (1 - b1) * g
            v[...] = b2 * v + (1 - b2) * g * g
            u = (m / bc1) / (np.sqrt(v / bc2) + self.eps) + self.weight_decay * p
            pn, un = np.linalg.norm(p), np.linalg.norm(u)
            ratio = pn / un if pn > 0 and un > 0 else 1.0
            if self.max_trust > 0:
                ratio = min(ratio, self.max_trust)
            p -= self.lr * ratio * u


class SophiaRef(_Ref):
    """Sophia, Liu et al. 2023, Algorithm 3 (plus maximize; rho is the paper's gamma)::

        g <- -g if maximize
        m <- beta1 * m + (1 - beta1) * g
        p <- p * (1 - lr * weight_decay)
        p <- p - lr * clip(m / max(rho * h, eps), 1)

    and ``update_hessian(params, estimates)``: h <- beta2 * h + (1 - beta2) * estimate (h starts
    at 0)."""

    def __init__(self, lr: float = 1e-4, betas=(0.965, 0.99), rho: float = 0.04, eps: float = 1e-15,
                 weight_decay: float = 0.1, maximize: bool = False):
        super().__init__(maximize)
        self.lr, self.betas, self.rho, self.eps, self.weight_decay = lr, tuple(betas), rho, eps, weight_decay

    def update_hessian(self, params, estimates) -> None:
        for i, (p, e) in enumerate(zip(params, estimates)):
            h = self.buf("hessian", i, p)
            h[...] = self.betas[1] * h + (1 - self.betas[1]) * np.asarray(e, np.float64)

    def step(self, params, grads) -> None:
        for i, (p, g) in enumerate(zip(params, grads)):
            g = self.grad(p, g)
            m, h = self.buf("exp_avg", i, p), self.buf("hessian", i, p)
            m[...] = self.betas[0] * m + (1 - self.betas[0]) * g
            p *= 1 - self.lr * self.weight_decay
            p -= self.lr * np.clip(m / np.maximum(self.rho * h, self.eps), -1, 1)


class ScheduleFreeRef(_Ref):
    """Schedule-Free AdamW (``adaptive``) and SGD, Defazio et al. 2024, "The Road Less Scheduled"
    (arXiv 2405.15682), as the authors' AdamWScheduleFree and SGDScheduleFree step them
    (facebookresearch/schedule_free 1.3+; plus maximize), their running sums kept as they keep
    them. At step t (1-based), with y the param::

        lr_t <- lr * t / warmup_steps if t <= warmup_steps else lr
        lr_max <- max(lr_max, lr_t)                (lr_max starts at -1)
        weight <- t^r * lr_max^weight_lr_power;  weight_sum <- weight_sum + weight
        c <- weight / weight_sum                   (0 when weight_sum is 0)
        g <- -g if maximize;  z <- y               (a param's first step)
        AdamW: v <- beta2 * v + (1 - beta2) * g^2;  u <- g / (sqrt(v / (1 - beta2^t)) + eps)
        SGD:   u <- g
        u <- u + weight_decay * y
        y <- y + c * (z - y);  y <- y + lr_t * (beta1 * (1 - c) - 1) * u;  z <- z - lr_t * u

    ``eval(params)`` moves y to x = y + (1 - 1/beta1) * (z - y), ``train(params)`` back with
    x + (1 - beta1) * (z - x); ``x_of(i, y)`` is param i's x, y unchanged. ``cs`` lists every c.
    """

    def __init__(self, lr: float, beta1: float, weight_decay: float, warmup_steps: int, r: float,
                 weight_lr_power: float, maximize: bool, adaptive: bool, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(maximize)
        self.lr, self.beta1, self.beta2, self.eps, self.weight_decay = lr, beta1, beta2, eps, weight_decay
        self.warmup_steps, self.r, self.weight_lr_power, self.adaptive = warmup_steps, r, weight_lr_power, adaptive
        self.lr_max, self.weight_sum = -1.0, 0.0
        self.cs: list[float] = []

    def step(self, params, grads) -> None:
        self.t += 1
        t = self.t
        lr = self.lr * (t / self.warmup_steps if t <= self.warmup_steps else 1.0)
        self.lr_max = max(self.lr_max, lr)
        weight = t ** self.r * self.lr_max ** self.weight_lr_power
        self.weight_sum += weight
        c = weight / self.weight_sum if self.weight_sum else 0.0
        self.cs.append(c)
        for i, (y, g) in enumerate(zip(params, grads)):
            g = self.grad(y, g)
            if i not in self.states.get("z", {}):
                self.buf("z", i, y)[...] = y
            z = self.buf("z", i, y)
            u = g
            if self.adaptive:
                v = self.buf("exp_avg_sq", i, y)
                v[...] = self.beta2 * v + (1 - self.beta2) * g * g
                u = g / (np.sqrt(v / (1 - self.beta2 ** t)) + self.eps)
            u = u + self.weight_decay * y
            y += c * (z - y)
            y += lr * (self.beta1 * (1 - c) - 1) * u
            z -= lr * u

    def x_of(self, i: int, y: np.ndarray) -> np.ndarray:
        z = self.states["z"][i] if i in self.states.get("z", {}) else y
        return y + (1 - 1 / self.beta1) * (z - y)

    def eval(self, params) -> None:
        for i, y in enumerate(params):
            y[...] = self.x_of(i, y)

    def train(self, params) -> None:
        for i, x in enumerate(params):
            z = self.states["z"][i] if i in self.states.get("z", {}) else x
            x += (1 - self.beta1) * (z - x)


class AdamWScheduleFreeRef(ScheduleFreeRef):
    def __init__(self, lr: float = 0.0025, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0, maximize: bool = False):
        super().__init__(lr, betas[0], weight_decay, warmup_steps, r, weight_lr_power, maximize, True, betas[1], eps)


class SGDScheduleFreeRef(ScheduleFreeRef):
    def __init__(self, lr: float = 1.0, momentum: float = 0.9, weight_decay: float = 0.0, warmup_steps: int = 0,
                 r: float = 0.0, weight_lr_power: float = 2.0, maximize: bool = False):
        super().__init__(lr, momentum, weight_decay, warmup_steps, r, weight_lr_power, maximize, False)


class AdafactorRef(_Ref):
    """torch.optim.Adafactor (torch >= 2.5; Shazeer & Stern 2018 with torch's use of lr and eps1),
    per tensor at step t, RMS over the tensor::

        g <- -g if maximize
        w <- t^beta2_decay;  rho <- min(lr, 1 / sqrt(t));  alpha <- max(eps2, RMS(p)) * rho
        p <- p * (1 - lr * weight_decay)
        p of >= 2 dims (matrices of its last two dims, leading dims batched):
            row_var <- row_var + w * (mean(g^2, over each row) - row_var)        (..., rows, 1)
            col_var <- col_var + w * (mean(g^2, over each column) - col_var)     (..., 1, cols)
            v <- row_var * col_var / max(mean(row_var, over the rows), eps1)
        else: variance <- variance + w * (g^2 - variance);  v <- variance
        u <- g / sqrt(max(v, eps1^2))
        p <- p - alpha / max(1, RMS(u) / d) * u

    eps1 None: the machine epsilon of the dtype param i's value is kept in, ``value_dtypes[i]``
    (float32 where not set). A param without elements is left alone (torch divides by zero).
    """

    def __init__(self, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, maximize=False):
        super().__init__(maximize)
        self.lr, self.beta2_decay, self.eps, self.d, self.weight_decay = lr, beta2_decay, tuple(eps), d, weight_decay
        self.value_dtypes: dict[int, np.dtype] = {}

    def _state(self, name: str, i: int, shape: tuple) -> np.ndarray:
        return self.states.setdefault(name, {}).setdefault(i, np.zeros(shape))

    def step(self, params, grads) -> None:
        self.t += 1
        w = self.t ** self.beta2_decay
        rho = min(self.lr, 1 / np.sqrt(self.t))
        for i, (p, g) in enumerate(zip(params, grads)):
            g = self.grad(p, g)
            if p.ndim >= 2:
                r = self._state("row_var", i, p.shape[:-1] + (1,))
                c = self._state("col_var", i, p.shape[:-2] + (1,) + p.shape[-1:])
            else:
                v = self._state("variance", i, p.shape)
            if p.size == 0:
                continue
            eps1 = self.eps[0]
            if eps1 is None:
                eps1 = float(np.finfo(self.value_dtypes.get(i, np.float32)).eps)
            alpha = max(self.eps[1], np.sqrt(np.mean(p * p))) * rho
            p *= 1 - self.lr * self.weight_decay
            if p.ndim >= 2:
                r += w * (np.mean(g * g, axis=-1, keepdims=True) - r)
                c += w * (np.mean(g * g, axis=-2, keepdims=True) - c)
                v = r * c / np.maximum(np.mean(r, axis=-2, keepdims=True), eps1)
            else:
                v += w * (g * g - v)
            u = g / np.sqrt(np.maximum(v, eps1 * eps1))
            p -= alpha / max(1.0, np.sqrt(np.mean(u * u)) / self.d) * u


_REFS = {"SGD": SGDRef, "Adam": AdamRef, "AdamW": AdamWRef, "Adagrad": AdagradRef, "Adadelta": AdadeltaRef,
         "RMSprop": RMSpropRef, "Adamax": AdamaxRef, "NAdam": NAdamRef, "RAdam": RAdamRef,
         "AdaBelief": AdaBeliefRef, "Lion": LionRef, "LARS": LARSRef, "LAMB": LAMBRef,
         "Sophia": SophiaRef, "AdamWScheduleFree": AdamWScheduleFreeRef, "SGDScheduleFree": SGDScheduleFreeRef,
         "Adafactor": AdafactorRef}


def reference_for(optimizer_name: str, kwargs: dict):
    """A fresh reference optimizer for the fastopt (and torch.optim) class ``optimizer_name``."""
    return _REFS[optimizer_name](**kwargs)
