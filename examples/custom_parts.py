"""Register your own parts from user code and use them by name in build_model.

Two parts are added here, outside the package:
- an aligner "gated_ft": the FT-Aligner followed by a learned per-frequency-row gate, so each of the
  F frequency rows can weigh the video feature differently;
- a guidance rule "multi_weighted": eq. 1 of the paper with separate weights for the two terms.

Run:  python examples/custom_parts.py
"""

import torch
from torch import nn

from controlfoley import ALIGNERS, GUIDANCE, build_model
from controlfoley.control.aligners import FTAligner
from controlfoley.guidance import TEXT_VIDEO, UNCOND, VIDEO, GuidanceRule


class GatedFT(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, grid: tuple[int, int], kernel_size: int) -> None:
        super().__init__()
        self.ft = FTAligner(in_dim, out_dim, grid, kernel_size)
        self.grid = grid
        self.gate = nn.Parameter(torch.ones(grid[0], 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ft(x).view(x.shape[0], self.grid[0], self.grid[1], -1)
        return (y * self.gate).flatten(1, 2)


@ALIGNERS.register("gated_ft")
def gated_ft(*, in_dim: int, out_dim: int, grid: list, kernel_size: int = 3) -> GatedFT:
    """The FT-Aligner with a learned gate per frequency row (the first sentence: `controlfoley list -v`)."""
    return GatedFT(in_dim, out_dim, (int(grid[0]), int(grid[1])), kernel_size)


class WeightedMultiCFG(GuidanceRule):
    conditions = (UNCOND, VIDEO, TEXT_VIDEO)

    def __init__(self, scale: float, schedule: str, video_weight: float, text_video_weight: float) -> None:
        super().__init__(scale, schedule)
        # under the arguments' names: the rule's repr shows them, which generate.json records and
        # `generate --skip-existing` compares (a warning says so for an argument kept otherwise)
        self.video_weight, self.text_video_weight = video_weight, text_video_weight

    def combine(self, logits: tuple[torch.Tensor, ...], scale: float) -> torch.Tensor:
        l_u, l_v, l_tv = logits
        return l_u + scale * (self.text_video_weight * (l_tv - l_u) + self.video_weight * (l_v - l_u))


@GUIDANCE.register("multi_weighted")
def multi_weighted(*, scale: float = 3.0, schedule: str = "linear", video_weight: float = 1.0, text_video_weight: float = 0.5) -> WeightedMultiCFG:
    """Multi-condition CFG with separate weights on the video and the text+video terms."""
    return WeightedMultiCFG(scale, schedule, video_weight, text_video_weight)


def main() -> None:
    torch.manual_seed(0)
    model = build_model(
        "specmaskfoley_tiny",
        aligner="gated_ft",
        guidance={"name": "multi_weighted", "video_weight": 1.5},
    ).eval()
    print("aligner:", type(model.aligner).__name__, "guidance:", model.guidance)
    b = 1
    feats = {"sync": torch.randn(b, 142, 128), "clip": torch.randn(b, 47, 64)}
    codes = model.generate(feats, torch.randn(b, 64), steps=4, generator=torch.Generator().manual_seed(0))
    print("sampled token map:", tuple(codes.shape), "(untrained weights: the tokens are random)")


if __name__ == "__main__":
    main()
