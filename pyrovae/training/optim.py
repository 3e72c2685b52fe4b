"""Optimizers for training with per-datapoint (local) variational parameters.

A per-datapoint guide (:class:`~pyrovae.guides.MeanFieldGuide`) holds tables of shape [N, D]; a
minibatch step indexes B << N rows, so the gradient is zero on every other row. Plain Adam
still moves those rows, by its momentum m / sqrt(v), so a row drifts on steps that never
saw its datapoint. :class:`RowSparseAdam` ("lazy" Adam) updates, on a row-sparse table,
only the rows with a non-zero gradient, each with its own step count t_i for the bias
correction:

    t_i += 1
    m_i = b1 m_i + (1 - b1) g_i,     v_i = b2 v_i + (1 - b2) g_i²
    θ_i -= lr (m_i / (1 - b1^t_i)) / (sqrt(v_i / (1 - b2^t_i)) + eps)

so a row follows exactly the Adam trajectory it would have if it were optimized alone on the
steps that touched it. Dense parameters (the decoder) get ordinary Adam (Kingma & Ba 2015).
The state is plain tensors, so ``state_dict()`` checkpoints with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

from typing import Iterable

import torch

from ..vae import VAE


class RowSparseAdam(torch.optim.Optimizer):
    """Adam whose parameters in ``row_sparse`` are updated only on rows with a non-zero gradient.

    ``row_sparse`` lists parameters whose first dimension indexes datapoints. It is part of the
    construction, not of the state, so ``load_state_dict`` accepts a ``torch.optim.Adam`` state
    of the same parameters (a scalar step count is then spread over all rows).
    """

    def __init__(self, params: Iterable, row_sparse: Iterable[torch.Tensor] = (), lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if lr <= 0 or eps <= 0 or not all(0 <= beta < 1 for beta in betas):
            raise ValueError(f"invalid Adam settings lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        self._row_sparse = {id(p) for p in row_sparse}

    def is_row_sparse(self, param: torch.Tensor) -> bool:
        return id(param) in self._row_sparse

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("RowSparseAdam expects dense gradients (zero on untouched rows)")
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros(param.shape[0] if self.is_row_sparse(param) else (),
                                                dtype=torch.float32, device=param.device)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                if self.is_row_sparse(param):
                    self._sparse_update(param, state, group["lr"], beta1, beta2, group["eps"])
                else:
                    _adam_update(param, param.grad, state["exp_avg"], state["exp_avg_sq"],
                                 state["step"], group["lr"], beta1, beta2, group["eps"])
        return loss

    @staticmethod
    def _sparse_update(param: torch.Tensor, state: dict, lr: float, beta1: float, beta2: float,
                       eps: float) -> None:
        if state["step"].dim() == 0:   # resumed from a dense Adam state: every row had that many steps
            state["step"] = state["step"].expand(param.shape[0]).clone()
        grad = param.grad
        rows = grad.reshape(grad.shape[0], -1).ne(0).any(dim=1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        # gather the touched rows, update them as a small dense Adam, scatter them back
        tail = (1,) * (param.dim() - 1)
        value, exp_avg, exp_avg_sq = param[rows], state["exp_avg"][rows], state["exp_avg_sq"][rows]
        step = state["step"][rows]
        _adam_update(value, grad[rows], exp_avg, exp_avg_sq, step.view(-1, *tail), lr, beta1, beta2, eps)
        param[rows] = value
        state["exp_avg"][rows] = exp_avg
        state["exp_avg_sq"][rows] = exp_avg_sq
        state["step"][rows] = step


def _adam_update(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                 step: torch.Tensor, lr: float, beta1: float, beta2: float, eps: float) -> None:
    """One Adam step in place, written as torch.optim.Adam's single-tensor path; ``step`` may
    be a scalar or broadcast against ``param`` (one count per row)."""
    step += 1
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2_sqrt = (1 - beta2 ** step).sqrt()
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg * (lr / bias_correction1), denom, value=-1.0)


def make_optimizer(vae: VAE, lr: float, local_lr: float | None = None) -> torch.optim.Optimizer:
    """Adam for a guide without per-datapoint parameters; otherwise RowSparseAdam with the guide's
    tables row-sparse, so a minibatch step moves only its own rows, at their own learning rate
    ``local_lr`` (a row is stepped once per epoch, the decoder once per batch)."""
    local = vae.row_parameters()
    if not local:
        return torch.optim.Adam(vae.parameters(), lr=lr)
    shared = [p for p in vae.parameters() if all(p is not q for q in local)]
    groups = [{"params": shared, "lr": lr}, {"params": local, "lr": local_lr or lr}]
    return RowSparseAdam(groups, row_sparse=local, lr=lr)
