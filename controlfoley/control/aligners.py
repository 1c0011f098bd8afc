"""Aligners: temporal features [b, t, d_in] -> token-grid features [b, F*T, D] in backbone order.

- `ft`: the Frequency-aware Temporal feature Aligner (SpecMaskFoley sec. 3.3). A Projection Block
  (Conv1d over time, then AdaptiveAvgPool1d to T) gives [b, T, D]; repeating it F times along
  frequency gives every token of one time column the same vector.
- `plain1d`: the same Projection Block pooled straight to F*T steps over the flattened row-major
  order, with no knowledge of frequency: token (f, t) receives a time slice unrelated to its time
  column. The paper reports that without the FT-Aligner SpecMaskFoley does not train.

For a 1-D tokenizer (grid (1, T)) the two are the same module: with one frequency row the flattened
order is the time order, so the FT-vs-1-D ablation only means something on a 2-D token grid.
"""

from einops import repeat
from torch import nn

from controlfoley._registry import ALIGNERS
from controlfoley.errors import ShapeError
from controlfoley.typing import Float, Tensor

__all__ = ["ProjectionBlock", "FTAligner", "Plain1DAligner"]


class ProjectionBlock(nn.Module):
    """Conv1d over time followed by adaptive average pooling to `out_len` steps."""

    def __init__(self, in_dim: int, out_dim: int, out_len: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ShapeError(f"kernel_size must be odd and positive (keeps time centred), got {kernel_size}")
        self.in_dim = in_dim
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size, padding=kernel_size // 2)
        self.pool = nn.AdaptiveAvgPool1d(out_len)

    def forward(self, x: Float[Tensor, "b t di"]) -> Float[Tensor, "b k do"]:
        if x.shape[-1] != self.in_dim:
            raise ShapeError(f"aligner expects features of width {self.in_dim}, got {x.shape[-1]}")
        return self.pool(self.conv(x.transpose(1, 2))).transpose(1, 2)


class FTAligner(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, grid: tuple[int, int], kernel_size: int = 3) -> None:
        super().__init__()
        self.grid = grid
        self.proj = ProjectionBlock(in_dim, out_dim, grid[1], kernel_size)

    def forward(self, x: Float[Tensor, "b t di"]) -> Float[Tensor, "b l do"]:
        cols = self.proj(x)  # (b, T, D)
        return repeat(cols, "b t d -> b (f t) d", f=self.grid[0])


class Plain1DAligner(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, grid: tuple[int, int], kernel_size: int = 3) -> None:
        super().__init__()
        self.grid = grid
        self.proj = ProjectionBlock(in_dim, out_dim, grid[0] * grid[1], kernel_size)

    def forward(self, x: Float[Tensor, "b t di"]) -> Float[Tensor, "b l do"]:
        return self.proj(x)


def _grid(grid: tuple[int, int] | list[int]) -> tuple[int, int]:
    if len(grid) != 2 or min(grid) < 1:
        raise ShapeError(f"grid must be (F, T) with positive sizes, got {grid}")
    return int(grid[0]), int(grid[1])


@ALIGNERS.register("ft")
def ft(*, in_dim: int, out_dim: int, grid: tuple[int, int] | list[int], kernel_size: int = 3) -> FTAligner:
    """FT-Aligner: pool time to T, repeat over F (paper sec. 3.3)."""
    return FTAligner(in_dim, out_dim, _grid(grid), kernel_size)


@ALIGNERS.register("plain1d")
def plain1d(*, in_dim: int, out_dim: int, grid: tuple[int, int] | list[int], kernel_size: int = 3) -> Plain1DAligner:
    """Pool time straight to F*T over the flattened order (the ablation that does not train)."""
    return Plain1DAligner(in_dim, out_dim, _grid(grid), kernel_size)
