"""Optional: an independent PyTorch reference of the DVT three-exit inference cascade, for the
"authors' PyTorch" column of benchmarks/cascade_speed.py. Needs torch, which dvt-ms does not
depend on: run it with a Python that has torch (cascade_speed.py --torch_python PATH starts it as
a subprocess). Timing CLI, one JSON line per run:

    python benchmarks/torch_reference.py --model dvt_deit_small --batch 16 --repeats 3

Written from a reading of the authors' public PyTorch code (blackfeather-wang/Dynamic-Vision-
Transformer), not copied from it.  It is meant to *compute the same way* as the
authors' code so that CPU timings of it stand in for theirs:

* grid resampling materialises nearest upsampling (F.interpolate) followed by
  F.adaptive_avg_pool2d, both for the reused feature (per block) and for the reused relations
  (query axis and key axis, with the batch*heads axis cut into chunks that are upsampled
  separately and concatenated, as the authors do: 2 + 2 chunks for T2T, 4 + 8 for DeiT);
* the Performer tokenizer evaluates its random-feature kernel with einsum, `.float()` casts and
  materialised `repeat`s, exactly like the published module;
* exact (erf) GELU, nn.LayerNorm, softmax, nn.Conv2d patch embedding, nn.Unfold soft split,
  1x1 nn.Conv2d relation mixing.

Eval/inference only (dropout and drop-path are identities at test time and are omitted).
Parameter names equal the published checkpoint keys, so `load_state_dict(strict=True)` works on
a checkpoint's `model_state_dict`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

STAGE_NAMES = ("less_less_token", "less_token", "normal_token")

# (kernel, stride, padding) of the first soft split for the 7x7, 10x10 and 14x14 T2T exits
T2T_SPLIT0 = ((14, 8, 3), (11, 6, 5), (7, 4, 2))
# (kernel = stride, padding) of the DeiT patch convolution for the three exits
DEIT_PATCH = ((32, 0), (23, 3), (16, 0))


@dataclass
class DVTConfig:
    family: str = "t2t"              # "t2t" or "deit"
    embed_dim: int = 256
    depth: int = 12
    num_heads: int = 4
    mlp_ratio: float = 2.0
    num_classes: int = 1000
    qkv_bias: bool = False
    layernorm_eps: float = 1e-5
    token_dim: int = 64              # T2T only
    img_size: int = 224
    in_chans: int = 3
    t2t_split0: Tuple[Tuple[int, int, int], ...] = T2T_SPLIT0
    deit_patch: Tuple[Tuple[int, int], ...] = DEIT_PATCH
    feature_reuse: bool = True
    relation_reuse: bool = True
    reuse_hidden: int = 128
    reuse_dim: int = 48
    # how many batch*heads chunks the authors upsample separately (key pass, query pass)
    relation_chunks: Tuple[int, int] = (2, 2)
    kernel_ratio: float = 0.5        # Performer: m = token_dim * kernel_ratio
    performer_eps: float = 1e-8

    def grids(self) -> List[int]:
        out = []
        for k in range(3):
            if self.family == "t2t":
                kk, s, p = self.t2t_split0[k]
                g = (self.img_size + 2 * p - kk) // s + 1
                for _ in range(2):       # two unfold(3, 2, 1)
                    g = (g + 2 - 3) // 2 + 1
            else:
                kk, p = self.deit_patch[k]
                g = (self.img_size + 2 * p - kk) // kk + 1
            out.append(g)
        return out


PRESETS = {
    "dvt_t2t_vit_12": dict(family="t2t", embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.0,
                           qkv_bias=False, layernorm_eps=1e-5, token_dim=64, relation_chunks=(2, 2)),
    "dvt_t2t_vit_14": dict(family="t2t", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0,
                           qkv_bias=False, layernorm_eps=1e-5, token_dim=64, relation_chunks=(2, 2)),
    "dvt_deit_small": dict(family="deit", embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
                           qkv_bias=True, layernorm_eps=1e-6, relation_chunks=(4, 8)),
}


def make_config(name_or_dict, **overrides) -> DVTConfig:
    """Config from a preset name, or from a golden-style json dict
    (keys family, embed_dim, depth, num_heads, mlp_ratio, num_classes, qkv_bias,
    layernorm_eps, token_dim)."""
    if isinstance(name_or_dict, str):
        kw = dict(PRESETS[name_or_dict])
    else:
        kw = dict(name_or_dict)
        fam = kw.get("family", "t2t")
        kw.setdefault("qkv_bias", fam == "deit")
        kw.setdefault("layernorm_eps", 1e-6 if fam == "deit" else 1e-5)
        kw.setdefault("relation_chunks", (4, 8) if fam == "deit" else (2, 2))
    kw.update(overrides)
    return DVTConfig(**kw)


# ----------------------------------------------------------------------------------------------
# resampling g_prev x g_prev -> g x g (materialised, as in the authors' code)

def upsample_size(g_prev: int, g: int) -> int:
    """Intermediate nearest-upsampling size: 14 for 7->10, 20 for 10->14 (published rule);
    g_prev * ceil(g / g_prev) in general."""
    return g_prev * int(math.ceil(g / g_prev))


def resample_grids(t: torch.Tensor, g: int, chunks: int = 1) -> torch.Tensor:
    """t: (N, C, gp, gp) -> (N, C, g, g) by nearest upsampling then adaptive average pooling.
    With chunks > 1 the N axis is upsampled piecewise and re-concatenated before pooling
    (what the published relation path does to bound peak memory)."""
    u = upsample_size(t.shape[-1], g)
    if chunks <= 1:
        up = F.interpolate(t, size=(u, u), mode="nearest")
    else:
        n = t.shape[0]
        step = n // chunks
        edges = [i * step for i in range(chunks)] + [n]
        pieces = [F.interpolate(t[a:b], size=(u, u), mode="nearest")
                  for a, b in zip(edges[:-1], edges[1:]) if b > a]
        up = torch.cat(pieces, 0)
    return F.adaptive_avg_pool2d(up, (g, g))


def sinusoid_table(n: int, d: int) -> torch.Tensor:
    pos = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(d)
    ang = pos / np.power(10000.0, 2 * (j // 2) / d)[None, :]
    tab = np.where(j % 2 == 0, np.sin(ang), np.cos(ang))
    return torch.tensor(tab, dtype=torch.float32)[None]


# ----------------------------------------------------------------------------------------------
# building blocks

class Mlp(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Performer(nn.Module):
    """Single-head Performer token mixer used inside the T2T tokenizer."""

    def __init__(self, dim: int, emb: int, kernel_ratio: float = 0.5, eps: float = 1e-8):
        super().__init__()
        self.emb = emb
        self.m = int(emb * kernel_ratio)
        self.eps = eps
        self.norm1 = nn.LayerNorm(dim)
        self.kqv = nn.Linear(dim, 3 * emb)
        self.proj = nn.Linear(emb, emb)
        self.norm2 = nn.LayerNorm(emb)
        self.mlp = nn.Sequential(nn.Linear(emb, emb), nn.GELU(), nn.Linear(emb, emb))
        w = nn.init.orthogonal_(torch.empty(self.m, emb)) * math.sqrt(self.m)
        self.w = nn.Parameter(w, requires_grad=False)

    def _features(self, t):
        # positive random features: exp(w.t - |t|^2 / 2) / sqrt(m), computed in float32
        half_sq = (t * t).sum(-1, keepdim=True).repeat(1, 1, self.m) / 2
        proj = torch.einsum("btd,md->btm", t.float(), self.w)
        return torch.exp(proj - half_sq) / math.sqrt(self.m)

    def forward(self, x):
        h = self.norm1(x)
        k, q, v = torch.split(self.kqv(h), self.emb, dim=-1)
        kf, qf = self._features(k), self._features(q)
        den = torch.einsum("btm,bm->bt", qf, kf.sum(1)).unsqueeze(2)
        vk = torch.einsum("bte,btm->bem", v.float(), kf)
        y = torch.einsum("btm,bem->bte", qf, vk) / (den.repeat(1, 1, self.emb) + self.eps)
        y = v + self.proj(y)
        return y + self.mlp(self.norm2(y))


class T2TTokenizer(nn.Module):
    def __init__(self, cfg: DVTConfig, split0: Tuple[int, int, int]):
        super().__init__()
        k0, s0, p0 = split0
        td = cfg.token_dim
        self.split0 = (k0, s0, p0)
        self.attention1 = Performer(cfg.in_chans * k0 * k0, td, cfg.kernel_ratio, cfg.performer_eps)
        self.attention2 = Performer(td * 9, td, cfg.kernel_ratio, cfg.performer_eps)
        self.project = nn.Linear(td * 9, cfg.embed_dim)

    @staticmethod
    def _to_grid(x):
        b, n, c = x.shape
        s = int(round(math.sqrt(n)))
        return x.transpose(1, 2).reshape(b, c, s, s)

    def forward(self, img):
        k0, s0, p0 = self.split0
        x = F.unfold(img, kernel_size=k0, stride=s0, padding=p0).transpose(1, 2)
        x = self.attention1(x)
        x = F.unfold(self._to_grid(x), kernel_size=3, stride=2, padding=1).transpose(1, 2)
        x = self.attention2(x)
        x = F.unfold(self._to_grid(x), kernel_size=3, stride=2, padding=1).transpose(1, 2)
        return self.project(x)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: DVTConfig, patch: Tuple[int, int]):
        super().__init__()
        k, p = patch
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=k, stride=k, padding=p)

    def forward(self, img):
        return self.proj(img).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, extra_logits: Optional[torch.Tensor] = None):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) * self.scale
        if extra_logits is not None:
            logits = logits + extra_logits
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out), logits


class Block(nn.Module):
    def __init__(self, cfg: DVTConfig, feature_reuse: bool):
        super().__init__()
        d, eps = cfg.embed_dim, cfg.layernorm_eps
        self.feature_reuse = feature_reuse
        self.reuse_dim = cfg.reuse_dim
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.attn = Attention(d, cfg.num_heads, cfg.qkv_bias)
        wide = d + (cfg.reuse_dim if feature_reuse else 0)
        self.norm2 = nn.LayerNorm(wide, eps=eps)
        self.mlp = Mlp(wide, int(d * cfg.mlp_ratio), d)
        if feature_reuse:
            self.feature_resuse_mlp = nn.Sequential(   # (sic) name as in the checkpoints
                nn.LayerNorm(d, eps=eps), Mlp(d, cfg.reuse_hidden, cfg.reuse_dim))

    def forward(self, x, prev_feature=None, extra_logits=None):
        a, relation = self.attn(self.norm1(x), extra_logits)
        x = x + a
        y = x
        if prev_feature is not None:
            f = self.feature_resuse_mlp(prev_feature)[:, 1:, :]
            b, n_prev, c = f.shape
            gp = int(round(math.sqrt(n_prev)))
            g = int(round(math.sqrt(x.shape[1] - 1)))
            f = resample_grids(f.transpose(1, 2).reshape(b, c, gp, gp), g)
            f = f.view(b, c, g * g).transpose(1, 2)
            f = torch.cat((torch.zeros(b, 1, c, dtype=f.dtype, device=f.device), f), dim=1)
            y = torch.cat((x, f), dim=2)
        return x + self.mlp(self.norm2(y)), relation


class Stage(nn.Module):
    """One exit: a complete ViT on its own tokenization, optionally reusing the previous exit."""

    def __init__(self, cfg: DVTConfig, index: int, reuse: bool):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.grid = cfg.grids()[index]
        self.feature_reuse = reuse and cfg.feature_reuse
        self.relation_reuse = reuse and cfg.relation_reuse
        n = self.grid * self.grid
        if cfg.family == "t2t":
            self.tokens_to_token = T2TTokenizer(cfg, cfg.t2t_split0[index])
            pos = sinusoid_table(n + 1, d)
        elif cfg.family == "deit":
            self.patch_embed = PatchEmbed(cfg, cfg.deit_patch[index])
            pos = torch.zeros(1, n + 1, d)
            nn.init.trunc_normal_(pos, std=0.02)
        else:
            raise ValueError(cfg.family)
        self.cls_token = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, d), std=0.02))
        self.pos_embed = nn.Parameter(pos, requires_grad=cfg.family == "deit")
        self.blocks = nn.ModuleList([Block(cfg, self.feature_reuse) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(d, eps=cfg.layernorm_eps)
        if self.relation_reuse:
            hl = cfg.num_heads * cfg.depth
            self.relation_reuse_conv = nn.Sequential(
                nn.Conv2d(hl, 3 * hl, kernel_size=1), nn.GELU(), nn.Conv2d(3 * hl, hl, kernel_size=1))
        self.head = nn.Linear(d, cfg.num_classes)
        self.apply(_init_like_authors)

    def _tokens(self, img):
        if self.cfg.family == "t2t":
            return self.tokens_to_token(img)
        return self.patch_embed(img)

    def _reused_relations(self, prev_relations: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        g = self.grid
        n = g * g
        r = self.relation_reuse_conv(torch.cat(list(prev_relations), 1))  # (B, HL, 1+np, 1+np)
        b, hl, rows, _ = r.shape
        gp = int(round(math.sqrt(rows - 1)))
        c_key, c_query = self.cfg.relation_chunks
        # key axis: every query row keeps its class-token key, the grid keys are resampled
        keys = r[:, :, :, 1:].reshape(-1, rows, gp, gp)
        keys = resample_grids(keys, g, c_key).reshape(-1, rows, n)
        t = torch.cat((r[:, :, :, 0].reshape(-1, rows, 1), keys), dim=2).transpose(1, 2)
        # query axis, same rule (now on the transposed tensor)
        cls_rows = t[:, :, 0:1]
        qs = t[:, :, 1:].reshape(-1, n + 1, gp, gp)
        qs = resample_grids(qs, g, c_query).reshape(-1, n + 1, n)
        t = torch.cat((cls_rows, qs), dim=2).transpose(1, 2).reshape(b, -1, n + 1, n + 1)
        return t.chunk(self.cfg.depth, 1)

    def forward(self, img, prev_feature=None, prev_relations=None):
        x = self._tokens(img)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        extra = None
        if prev_relations is not None and self.relation_reuse:
            extra = self._reused_relations(prev_relations)
        if not self.feature_reuse:
            prev_feature = None
        relations = []
        for i, blk in enumerate(self.blocks):
            x, rel = blk(x, prev_feature, None if extra is None else extra[i])
            relations.append(rel)
        logits = self.head(self.norm(x)[:, 0])
        return logits, x, relations


def _init_like_authors(m):
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class DVT(nn.Module):
    def __init__(self, cfg: DVTConfig):
        super().__init__()
        self.cfg = cfg
        self.less_less_token = Stage(cfg, 0, reuse=False)
        self.less_token = Stage(cfg, 1, reuse=True)
        self.normal_token = Stage(cfg, 2, reuse=True)

    def stages(self):
        return [self.less_less_token, self.less_token, self.normal_token]

    def forward(self, img):
        """Full cascade (all three exits), returns the three exits' logits."""
        feat, rels, outs = None, None, []
        for st in self.stages():
            logits, feat, rels = st(img, feat, rels)
            outs.append(logits)
        return tuple(outs)


def build(name_or_cfg, **overrides) -> DVT:
    cfg = name_or_cfg if isinstance(name_or_cfg, DVTConfig) else make_config(name_or_cfg, **overrides)
    return DVT(cfg).eval()


def load_checkpoint(model: DVT, path: str, strict: bool = True):
    ck = torch.load(path, map_location="cpu", weights_only=False)
    sd = ck["model_state_dict"] if "model_state_dict" in ck else ck
    model.load_state_dict(sd, strict=strict)
    return ck


def state_dict_elements(model: nn.Module) -> int:
    return sum(v.numel() for v in model.state_dict().values())


def _time_cascade(name, batch, repeats, warmup=1, img_size=224):
    """Median ms per image of the full cascade of preset ``name`` (random weights, no_grad)."""
    import statistics
    import time
    torch.manual_seed(0)
    model = build(name, img_size=img_size)
    images = torch.randn(batch, 3, img_size, img_size)
    runs = []
    with torch.no_grad():
        for index in range(warmup + repeats):
            start = time.perf_counter()
            model(images)
            if index >= warmup:
                runs.append(time.perf_counter() - start)
    return 1e3 * statistics.median(runs) / batch


def _time_train_step(name, batch, repeats, warmup=2, img_size=224, num_classes=8, ema_decay=0.99996):
    """Median ms per image of a training step as the authors train: mixed (soft) targets, the
    cross-entropy of every exit summed, backward, AdamW, then the EMA of the weights (timm's
    ModelEmaV2). Dropout and drop-path are omitted (the reference is the inference module), so the
    step is if anything cheaper than theirs."""
    import statistics
    import time
    torch.manual_seed(0)
    model = build(name, img_size=img_size, num_classes=num_classes).train()
    ema = [p.detach().clone() for p in model.state_dict().values()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    images = torch.randn(batch, 3, img_size, img_size)
    targets = torch.softmax(torch.randn(batch, num_classes), dim=1)
    runs = []
    for index in range(warmup + repeats):
        start = time.perf_counter()
        loss = sum(torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean() for logits in model(images))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for average, value in zip(ema, model.state_dict().values()):
                average.copy_(average * ema_decay + (1.0 - ema_decay) * value)
        if index >= warmup:
            runs.append(time.perf_counter() - start)
    return 1e3 * statistics.median(runs) / batch


def main(argv=None):
    import argparse
    import json
    parser = argparse.ArgumentParser(description="time the PyTorch reference cascade")
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train", action="store_true", help="time a training step instead of inference")
    args = parser.parse_args(argv)
    timer = _time_train_step if args.train else _time_cascade
    print(json.dumps({"model": args.model, "batch": args.batch, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "train": args.train,
                      "ms_per_image": timer(args.model, args.batch, args.repeats)}))


if __name__ == "__main__":
    main()
