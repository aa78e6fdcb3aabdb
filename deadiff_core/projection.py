"""DEADiff's small projections: ProjLayer after each Q-Former, i_to_k / i_to_v at each UNet site."""

from __future__ import annotations

import torch
from torch import nn

from .config import DEADiffConfig
from .sites import SITES


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ProjLayer(nn.Module):
    """Pre-norm MLP with a residual on the raw input: y = x + dense2(QuickGELU(dense1(LayerNorm(x))))."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)
        self.dense1 = nn.Linear(hidden, intermediate)
        self.act = QuickGELU()
        self.dense2 = nn.Linear(intermediate, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dense2(self.act(self.dense1(self.LayerNorm(x))))


class SiteProjection(nn.Module):
    def __init__(self, context_dim: int, width: int) -> None:
        super().__init__()
        self.i_to_k = nn.Linear(context_dim, width, bias=False)
        self.i_to_v = nn.Linear(context_dim, width, bias=False)


class SiteProjections(nn.Module):
    """The 32 bias-free projections of image tokens into each cross-attention site's keys and values."""

    def __init__(self, c: DEADiffConfig) -> None:
        super().__init__()
        self.sites = nn.ModuleDict({s.name: SiteProjection(c.context_dim, c.site_widths[s.name]) for s in SITES})

    def layers(self, site_name: str) -> tuple[nn.Linear, nn.Linear]:
        """The i_to_k and i_to_v layers of one site. Project tokens by calling them: a host's layers
        (see operations.py) may keep their weights elsewhere and bring them in only for the call."""
        site = self.sites[site_name]
        return site.i_to_k, site.i_to_v

    def projections(self, site_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight matrices of one site, for inspection (compute through `layers`)."""
        i_to_k, i_to_v = self.layers(site_name)
        return i_to_k.weight, i_to_v.weight

    def load_official(self, tensors: dict[str, torch.Tensor], assign: bool = True) -> None:
        self.sites.load_state_dict(
            {
                f"{s.name}.{p}.weight": tensors[s.checkpoint_prefix + f"{p}.weight"]
                for s in SITES
                for p in ("i_to_k", "i_to_v")
            },
            strict=True,
            assign=assign,
        )
