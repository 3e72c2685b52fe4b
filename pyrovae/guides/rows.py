"""Row operations on per-point guides, whose parameters all have the datapoints' rows first
(:class:`~pyrovae.guides.MeanFieldGuide`, :class:`~pyrovae.guides.PerPointFlowGuide`)."""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn


def _rebuilt(template: nn.Module, rows_of_param) -> nn.Module:
    guide = copy.deepcopy(template)
    with torch.no_grad():
        for name, param in guide.named_parameters():
            param.data = rows_of_param(name, param)
    guide.num_rows = next(guide.parameters()).shape[0]
    return guide


def take_rows(guide: nn.Module, index: torch.Tensor) -> nn.Module:
    """The rows ``index`` of ``guide``, as a guide over rows 0..len(index)-1."""
    return _rebuilt(guide, lambda name, param: param.data[index.to(param.device)].clone())


def concat_rows(guides: Sequence[nn.Module]) -> nn.Module:
    """One guide holding the rows of ``guides`` in order (all of one family)."""
    if len(guides) == 1:
        return guides[0]
    params = [dict(g.named_parameters()) for g in guides]
    return _rebuilt(guides[0], lambda name, param: torch.cat([p[name].data for p in params]))


def select_rows(take_a: torch.Tensor, a: nn.Module, b: nn.Module) -> nn.Module:
    """Row i of ``a`` where ``take_a[i]``, else of ``b`` (same family, same number of rows)."""
    params_b = dict(b.named_parameters())
    return _rebuilt(a, lambda name, param: torch.where(take_a.view(-1, *([1] * (param.dim() - 1))),
                                                       param.data, params_b[name].data))
