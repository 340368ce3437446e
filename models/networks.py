"""Denoising networks: ``net(y, model_time, cond) -> eps_hat`` with optional conditioning.

Conditioning (:class:`Conditioning`) serves every subset of conditions with one
network:

* **discrete attributes** -- ``{"color": 4, "shape": 3}``: each attribute has an
  embedding table with one extra *null token* (index ``n_classes``), so a missing
  attribute, or one dropped during classifier-free training, is the null token;
* **continuous conditions** -- ``{"xy": 2}``: random Fourier features of the
  value, or a learned null vector when absent (a row of NaNs marks one sample's
  condition as absent);
* **point sets** (:class:`UNet` only) -- ``{"xys": 0.1}``: a set of image
  positions ``(N, S, 2)`` drawn as one heat-map channel (the sum of a bump per
  point, NaN rows absent), so the network is invariant to the order of the set
  and takes any number of points;
* **unconditional** use -- no conditions at all.

The embeddings are summed with the time embedding and added in every block.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import nn

from probcomp.errors import DataError

__all__ = ["Conditioning", "ResMLP", "TimeEmbedding", "UNet", "build", "event_shape_for"]

CondDict = dict[str, torch.Tensor]


class TimeEmbedding(nn.Module):
    """Sinusoidal features of ``time_scale * t`` followed by a two-layer MLP."""

    def __init__(self, dim: int, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.dim, self.time_scale = dim, float(time_scale)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
        arg = (self.time_scale * t)[:, None] * freqs
        return self.mlp(torch.cat([arg.sin(), arg.cos()], 1))


class Conditioning(nn.Module):
    """Embeds discrete attributes (with null tokens) and continuous conditions (Fourier features)."""

    def __init__(
        self,
        dim: int,
        attributes: dict[str, int] | None = None,
        continuous: dict[str, int] | None = None,
        fourier_features: int = 64,
        fourier_scale: float = 4.0,
        linear: tuple[str, ...] | list[str] = (),
    ) -> None:
        super().__init__()
        self.dim = dim
        self.attributes = dict(attributes or {})
        self.continuous = dict(continuous or {})
        self.linear = tuple(linear)
        if set(self.linear) - set(self.continuous):
            raise DataError(f"linear conditions {sorted(self.linear)} must be continuous ones")
        self.tables = nn.ModuleDict({k: nn.Embedding(n + 1, dim) for k, n in self.attributes.items()})
        self.proj = nn.ModuleDict()
        self.null = nn.ParameterDict()
        for k, d in self.continuous.items():
            if k in self.linear:  # a learned latent: an MLP of the raw values, no Fourier features
                self.proj[k] = nn.Sequential(nn.Linear(d, dim), nn.SiLU(), nn.Linear(dim, dim))
                self.null[k] = nn.Parameter(torch.zeros(dim))
                continue
            g = torch.Generator().manual_seed(len(k) * 7919 + d)
            self.register_buffer(
                f"_B_{k}", fourier_scale * torch.randn(d, fourier_features // 2, generator=g)
            )
            self.proj[k] = nn.Sequential(nn.Linear(d + fourier_features, dim), nn.SiLU(), nn.Linear(dim, dim))
            self.null[k] = nn.Parameter(torch.zeros(dim))

    @property
    def is_conditional(self) -> bool:
        return bool(self.attributes or self.continuous)

    def spec(self) -> dict[str, Any]:
        return {"attributes": self.attributes, "continuous": self.continuous}

    def forward(self, cond: CondDict | None, n: int, like: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(n, self.dim, dtype=like.dtype, device=like.device)
        cond = cond or {}
        unknown = set(cond) - set(self.attributes) - set(self.continuous)
        if unknown:
            raise DataError(
                f"unknown condition(s) {sorted(unknown)}; the network takes attributes "
                f"{sorted(self.attributes)} and continuous {sorted(self.continuous)}"
            )
        for k, n_cls in self.attributes.items():
            v = cond.get(k)
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim == 2 and v.shape[1] == n_cls:
                # relaxed attribute (N, n_classes): probabilities mix the class embeddings
                table = cast(nn.Embedding, self.tables[k])  # ModuleDict items are typed as Module
                out = out + v.to(like.dtype).expand(n, n_cls) @ table.weight[:n_cls]
                continue
            if k in cond:
                idx = torch.as_tensor(cond[k], device=like.device).long().expand(n)
                if bool(((idx < 0) | (idx > n_cls)).any()):
                    raise DataError(f"attribute {k!r} takes values 0..{n_cls - 1} (null token {n_cls})")
            else:
                idx = torch.full((n,), n_cls, dtype=torch.long, device=like.device)
            out = out + self.tables[k](idx)
        for k, d in self.continuous.items():
            if k in cond:
                v = torch.as_tensor(cond[k], dtype=like.dtype, device=like.device).reshape(-1, d).expand(n, d)
                dropped = torch.isnan(v).any(1, keepdim=True)  # NaN rows mean "absent" (per sample)
                v = torch.nan_to_num(v)
                if k in self.linear:
                    emb = self.proj[k](v)
                else:
                    arg = 2 * math.pi * v @ getattr(self, f"_B_{k}").to(like.dtype)
                    emb = self.proj[k](torch.cat([v, arg.sin(), arg.cos()], 1))
                emb = torch.where(dropped, self.null[k].expand(n, -1), emb)
            else:
                emb = self.null[k].expand(n, -1)
            out = out + emb
        return out


def _embed(
    time: TimeEmbedding, conditioning: Conditioning, y: torch.Tensor, t: torch.Tensor, cond: Any
) -> torch.Tensor:
    """Time embedding plus condition embedding (an unconditional network refuses conditions)."""
    emb = time(t.to(y.dtype).expand(y.shape[0]))
    if conditioning.is_conditional:
        return emb + conditioning(cond, y.shape[0], y)
    if cond:
        raise DataError(f"this network is unconditional; got conditions {sorted(cond)}")
    return emb


def _zero(layer: nn.Module) -> None:
    """Zero-initialise an output layer, so an untrained network predicts ``eps_hat = 0``."""
    # a Linear or Conv2d: its weight and bias are Parameters (Module.__getattr__ says Tensor | Module)
    nn.init.zeros_(cast(torch.Tensor, layer.weight))
    nn.init.zeros_(cast(torch.Tensor, layer.bias))


class _Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm1, self.lin1 = nn.LayerNorm(hidden), nn.Linear(hidden, hidden)
        self.emb = nn.Linear(hidden, hidden)
        self.norm2, self.lin2 = nn.LayerNorm(hidden), nn.Linear(hidden, hidden)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.lin1(self.act(self.norm1(h))) + self.emb(emb)
        return h + self.lin2(self.act(self.norm2(z)))


class ResMLP(nn.Module):
    """Residual MLP denoiser for vectors (the Reduce-Reuse-Recycle toy recipe).

    ``blocks`` residual blocks of width ``hidden`` with LayerNorm + SiLU, a
    sinusoidal time embedding, optional conditioning, and a zero-initialised output
    layer (so an untrained network predicts ``eps_hat = 0``).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        blocks: int = 4,
        *,
        attributes: dict[str, int] | None = None,
        continuous: dict[str, int] | None = None,
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        self.config = {
            "kind": "resmlp",
            "dim": dim,
            "hidden": hidden,
            "blocks": blocks,
            "attributes": dict(attributes or {}),
            "continuous": dict(continuous or {}),
            "time_scale": time_scale,
        }
        self.inp = nn.Linear(dim, hidden)
        self.time = TimeEmbedding(hidden, time_scale)
        self.cond = Conditioning(hidden, attributes, continuous)
        self.blocks = nn.ModuleList(_Block(hidden) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, dim))
        _zero(self.out[-1])

    def forward(self, y: torch.Tensor, t: torch.Tensor, cond: CondDict | None = None) -> torch.Tensor:
        emb = _embed(self.time, self.cond, y, t, cond)
        h = self.inp(y)
        for b in self.blocks:
            h = b(h, emb)
        return self.out(h)


def _groups(ch: int) -> int:
    return next(g for g in (8, 4, 2, 1) if ch % g == 0)


class _ConvBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time/condition embedding added in between."""

    def __init__(self, cin: int, cout: int, emb: int) -> None:
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.e = nn.Linear(emb, cout)
        self.n2, self.c2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.c1(self.act(self.n1(h))) + self.e(emb)[:, :, None, None]
        return self.skip(h) + self.c2(self.act(self.n2(z)))


class UNet(nn.Module):
    """A small U-Net for ``(channels, size, size)`` images (16-32 px, 1-3 channels).

    One convolutional block per resolution (channel multipliers ``mults``), stride-2
    down-sampling, nearest up-sampling with skip connections, the same time and
    condition embeddings as :class:`ResMLP`, and a zero-initialised output conv.
    With ``coords`` the input gets two extra channels holding each pixel's
    normalised ``(x, y)`` (CoordConv): a convolutional network is otherwise nearly
    translation-equivariant and cannot place an object at a location it is only
    told through a global condition vector.  ``spatial`` names continuous
    conditions that are image positions ``(x, y)`` in [0, 1] and a radius: each is
    also drawn as an input channel ``exp(-|p - xy|^2 / (2 r^2))`` (zero when the
    condition is absent).  ``point_sets`` names set-valued conditions ``(N, S, 2)``
    that enter through such a channel alone, the sum of one bump per present point
    (the non-compositional "generative classifier" of the dissertation's Table 5.1
    is conditioned on all object positions this way).  A global vector alone was
    ignored in training: the eps loss gains almost nothing from a blob's position,
    which touches a few dozen of 3072 pixels, while a map hands the position to the
    convolutions directly.  ``broadcast`` names continuous conditions that are also tiled
    over the image as constant input channels, one per coordinate (the spatial broadcast of
    Watters et al. 2019): with ``coords`` the first convolution sees each pixel's position
    beside the latent, so a latent that encodes where an object is can paint it there
    (Decomp Diffusion's components, :mod:`probcomp.models.decomposition`).  ``linear`` names
    continuous conditions embedded by an MLP of their raw values instead of Fourier features:
    learned latents, whose scale is not that of a position in [0, 1], for which the Fourier
    features' high frequencies would make the embedding an arbitrary hash of the latent.
    """

    _coords: torch.Tensor  # (1, 2, size, size) pixel centres, a buffer (with coords, spatial or point_sets)

    def __init__(
        self,
        channels: int = 3,
        size: int = 32,
        base: int = 32,
        mults: tuple[int, ...] = (1, 2, 2),
        *,
        attributes: dict[str, int] | None = None,
        continuous: dict[str, int] | None = None,
        time_scale: float = 1000.0,
        coords: bool = False,
        spatial: dict[str, float] | None = None,
        point_sets: dict[str, float] | None = None,
        broadcast: tuple[str, ...] | list[str] = (),
        linear: tuple[str, ...] | list[str] = (),
    ) -> None:
        super().__init__()
        if size % 2 ** (len(mults) - 1):
            raise DataError(f"UNet: size {size} is not divisible by 2^{len(mults) - 1}")
        self.config = {
            "kind": "unet",
            "channels": channels,
            "size": size,
            "base": base,
            "mults": list(mults),
            "attributes": dict(attributes or {}),
            "continuous": dict(continuous or {}),
            "time_scale": time_scale,
            "coords": bool(coords),
            "spatial": {k: float(r) for k, r in (spatial or {}).items()},
            "point_sets": {k: float(r) for k, r in (point_sets or {}).items()},
            "broadcast": [str(k) for k in broadcast],
            "linear": [str(k) for k in linear],
        }
        if set(self.config["broadcast"]) - set(self.config["continuous"]):
            raise DataError(
                f"UNet: broadcast conditions {self.config['broadcast']} must be continuous ones "
                f"({sorted(self.config['continuous'])})"
            )
        clash = set(self.config["point_sets"]) & (
            set(self.config["continuous"]) | set(self.config["attributes"])
        )
        if clash:
            raise DataError(f"UNet: point sets {sorted(clash)} are also attributes or continuous conditions")
        bad = set(self.config["spatial"]) - set(self.config["continuous"])
        if bad or any(self.config["continuous"][k] != 2 for k in self.config["spatial"]):
            raise DataError(
                f"UNet: spatial conditions {sorted(self.config['spatial'])} must be 2-D continuous ones"
            )
        emb = 4 * base
        self.time = TimeEmbedding(emb, time_scale)
        self.cond = Conditioning(emb, attributes, continuous, linear=self.config["linear"])
        maps = len(self.config["spatial"]) + len(self.config["point_sets"])
        maps += sum(self.config["continuous"][k] for k in self.config["broadcast"])
        self.inp = nn.Conv2d(channels + 2 * bool(coords) + maps, base, 3, padding=1)
        if coords or maps:
            grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
            gy, gx = torch.meshgrid(grid, grid, indexing="ij")
            self.register_buffer("_coords", torch.stack([gx, gy])[None], persistent=False)
        chans = [base * m for m in mults]
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        cin = base
        for i, c in enumerate(chans):
            self.down.append(_ConvBlock(cin, c, emb))
            self.pool.append(nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(chans) - 1 else nn.Identity())
            cin = c
        self.mid = _ConvBlock(cin, cin, emb)
        self.up = nn.ModuleList()
        for c in reversed(chans):
            self.up.append(_ConvBlock(cin + c, c, emb))
            cin = c
        self.out = nn.Sequential(
            nn.GroupNorm(_groups(cin), cin), nn.SiLU(), nn.Conv2d(cin, channels, 3, padding=1)
        )
        _zero(self.out[-1])

    def forward(self, y: torch.Tensor, t: torch.Tensor, cond: CondDict | None = None) -> torch.Tensor:
        cond = dict(cond or {})
        sets = {k: cond.pop(k, None) for k in self.config["point_sets"]}
        emb = _embed(self.time, self.cond, y, t, cond)
        extra = [self._coords.to(y.dtype).expand(y.shape[0], -1, -1, -1)] if self.config["coords"] else []
        for k, r in self.config["spatial"].items():
            extra.append(self._heatmap(cond.get(k), r, y))
        for k, r in self.config["point_sets"].items():
            extra.append(self._set_heatmap(k, sets[k], r, y))
        for k in self.config["broadcast"]:
            extra.append(self._tiled(k, cond.get(k), y))
        h = self.inp(torch.cat([y, *extra], 1) if extra else y)
        skips = []
        for block, pool in zip(self.down, self.pool, strict=True):
            h = block(h, emb)
            skips.append(h)
            h = pool(h)
        h = self.mid(h, emb)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = nn.functional.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], 1), emb)
        return self.out(h)

    def _heatmap(self, xy: Any, radius: float, like: torch.Tensor) -> torch.Tensor:
        """``exp(-|p - xy|^2 / (2 r^2))`` per sample, zero where ``xy`` is absent (missing or NaN)."""
        n = like.shape[0]
        if xy is None:
            return like.new_zeros(n, 1, *like.shape[-2:])
        v = torch.as_tensor(xy, dtype=like.dtype, device=like.device).reshape(-1, 2).expand(n, 2)
        grid = (self._coords.to(like.dtype) + 1) / 2  # (1, 2, H, W) in [0, 1]
        d2 = (grid - torch.nan_to_num(v)[:, :, None, None]).square().sum(1, keepdim=True)
        present = ~torch.isnan(v).any(1)
        return torch.exp(-d2 / (2 * radius**2)) * present.to(like.dtype)[:, None, None, None]

    def _tiled(self, name: str, value: Any, like: torch.Tensor) -> torch.Tensor:
        """A continuous condition ``(N, d)`` tiled as ``d`` constant channels (zero where absent)."""
        n, d = like.shape[0], self.config["continuous"][name]
        if value is None:
            return like.new_zeros(n, d, *like.shape[-2:])
        v = torch.nan_to_num(torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1, d))
        return v.expand(n, d)[:, :, None, None].expand(n, d, *like.shape[-2:])

    def _set_heatmap(self, name: str, xys: Any, radius: float, like: torch.Tensor) -> torch.Tensor:
        """``sum_s exp(-|p - xy_s|^2 / (2 r^2))`` over the present points of each sample's set."""
        n = like.shape[0]
        if xys is None:
            return like.new_zeros(n, 1, *like.shape[-2:])
        v = torch.as_tensor(xys, dtype=like.dtype, device=like.device)
        if v.ndim == 2:  # one set shared by the batch
            v = v[None]
        if v.ndim != 3 or v.shape[-1] != 2 or v.shape[0] not in (1, n):
            raise DataError(
                f"point set {name!r} must have shape (S, 2) or (N, S, 2) with N = {n}, got {tuple(v.shape)}"
            )
        v = v.expand(n, -1, -1)
        grid = (self._coords.to(like.dtype) + 1) / 2  # (1, 2, H, W)
        d2 = (grid[:, None] - torch.nan_to_num(v)[:, :, :, None, None]).square().sum(2)  # (N, S, H, W)
        present = (~torch.isnan(v).any(-1)).to(like.dtype)[:, :, None, None]
        return (torch.exp(-d2 / (2 * radius**2)) * present).sum(1, keepdim=True)


def event_shape_for(config: dict[str, Any]) -> tuple[int, ...] | None:
    """The event shape a network of this config takes (``None`` for a kind probcomp does not build).

    A :class:`ResMLP` of ``dim`` takes ``(dim,)``, a :class:`UNet` ``(channels, size, size)``.
    A malformed config raises ``KeyError``, ``TypeError`` or ``ValueError``.
    """
    kind = config.get("kind")
    if kind == "resmlp":
        return (int(config["dim"]),)
    if kind in ("unet", "decomposition"):
        c, n = int(config["channels"]), int(config["size"])
        return (c, n, n)
    return None


def build(config: dict[str, Any]) -> nn.Module:
    """A network from its JSON config (no code is executed: only known kinds are built)."""
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind == "decomposition":
        from .decomposition import Decomposition  # it builds on UNet, so it is imported here

        return Decomposition(**cfg)
    shared = {
        "attributes": {k: int(v) for k, v in cfg.pop("attributes", {}).items()},
        "continuous": {k: int(v) for k, v in cfg.pop("continuous", {}).items()},
        "time_scale": float(cfg.pop("time_scale", 1000.0)),
    }
    if kind == "resmlp":
        dim = int(cfg.pop("dim"))
        return ResMLP(dim, int(cfg.pop("hidden")), int(cfg.pop("blocks")), **shared)
    if kind == "unet":
        mults = tuple(int(m) for m in cfg.pop("mults"))
        return UNet(
            int(cfg.pop("channels")),
            int(cfg.pop("size")),
            int(cfg.pop("base")),
            mults,
            coords=bool(cfg.pop("coords", False)),
            spatial={k: float(r) for k, r in cfg.pop("spatial", {}).items()},
            point_sets={k: float(r) for k, r in cfg.pop("point_sets", {}).items()},
            broadcast=tuple(str(k) for k in cfg.pop("broadcast", [])),
            linear=tuple(str(k) for k in cfg.pop("linear", [])),
            **shared,
        )
    raise DataError(f"unknown network kind {kind!r}")
