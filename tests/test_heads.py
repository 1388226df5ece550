"""Embeddings tied to attention heads (``C // num_heads``): pruned in units of one channel per
head, every head losing the same dimensions, so heads stay equal-sized (earlybird.graph.heads)."""
import pytest
import timm
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import earlybird as eb
from earlybird.run.io import RECORD_ATTR
from conftest import randomize_norms


class TiedAttention(nn.Module):
    """Head width taken from the input width, as timm's CaiT and torchvision's Swin do; a
    ``q_bias``/``v_bias`` pair of its own, as BEiT's."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(dim)), nn.Parameter(torch.randn(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = nn.functional.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class TinyViT(nn.Module):
    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        dim = heads * head_dim
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.norm1, self.attn = nn.LayerNorm(dim), TiedAttention(dim, heads)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 3)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.attn(self.norm1(x))
        x = x + self.fc2(self.fc1(self.norm2(x)).relu())
        return self.head(self.norm(x).mean(1))


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@settings(max_examples=8, deadline=None)
@given(heads=st.integers(1, 4), head_dim=st.integers(3, 6), ratio=st.sampled_from([0.3, 0.5, 0.7]),
       seed=st.integers(0, 3))
def test_tied_heads_stay_equal_sized_and_consistent(heads, head_dim, ratio, seed):
    model = TinyViT(heads, head_dim)
    randomize_norms(model, seed)
    pruner = eb.EarlyBirdPruner(model, X, ratios=[ratio])
    assert pruner.excluded == {} and list(pruner.graph.ties) == ["patch"]
    assert pruner.graph.ties["patch"]["heads"] == heads
    mask = pruner.masks(ratio)["patch"]
    kept = int(mask.sum())
    assert kept % heads == 0                              # whole units: one channel per head
    # a unit is the same position in each head_dim-wide slice
    assert all(bool(mask[d::head_dim].all()) or not bool(mask[d::head_dim].any())
               for d in range(head_dim))
    small = pruner.prune(ratio, force=True)
    left = kept // heads
    assert small.patch.out_channels == heads * left
    attn = small.attn
    assert attn.num_heads == heads
    assert attn.qkv.out_features == 3 * heads * left and attn.qkv.in_features == heads * left
    assert attn.proj.in_features == heads * left
    assert attn.q_bias.shape == attn.v_bias.shape == (heads * left,)
    assert small(X).shape == (2, 3) and bool(torch.isfinite(small(X)).all())


def test_the_same_dimensions_leave_every_head_and_the_cut_replays(tmp_path):
    model = TinyViT(heads=3, head_dim=4)
    randomize_norms(model, 1)
    with torch.no_grad():                                 # head dimension 2 is the weakest
        w = model.attn.qkv.weight.view(3, 3, 4, 12)
        w[:, :, 2] *= 0.01
    pruner = eb.EarlyBirdPruner(model, X, ratios=[0.3], coefficients=False)
    keep = pruner.masks(0.3)["patch"]
    assert int(keep.sum()) == 9                           # 12 -> 9: one unit of 3
    small = pruner.prune(0.3, force=True)
    inner = [k * 4 + d for k in range(3) for d in (0, 1, 3)]       # dimension 2 of each head
    expected_qkv = model.attn.qkv.weight.detach()[[s * 12 + i for s in range(3) for i in inner]]
    assert torch.equal(small.attn.qkv.weight[:, :], expected_qkv[:, keep.nonzero().flatten()])
    assert torch.equal(small.attn.q_bias, model.attn.q_bias.detach()[inner])
    assert torch.equal(small.attn.proj.weight, model.attn.proj.weight.detach()[keep][:, inner])
    history = getattr(small, RECORD_ATTR)["history"]
    heads = [e for e in history if e[1] == "heads"]
    assert heads == [["attn", "heads", {"width": 12, "heads": 3, "producers": ["qkv"],
                                        "proj": "proj", "dims": [2]}]]
    assert history.index(heads[0]) == 1                   # right after the embedding's cut
    eb.save_pruned(small, tmp_path / "small.pt")
    again = eb.load_pruned(tmp_path / "small.pt", TinyViT(heads=3, head_dim=4))
    assert torch.equal(again.eval()(X), small.eval()(X))


def test_strict_keeps_refusing_a_tied_embedding():
    with pytest.raises(eb.UnsupportedModelError):
        eb.EarlyBirdPruner(TinyViT(2, 4), X, strict=True).prune(0.5, force=True)


def test_timm_cait_prunes_its_embedding_with_every_attention_head():
    # CaiT-XXS with 4 of its 24 self-attention blocks (and both class-attention blocks)
    model = timm.create_model("cait_xxs24_224", num_classes=10, pretrained=False, img_size=32,
                              depth=4)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pruner = eb.EarlyBirdPruner(model, x, ratios=[0.5])
    tie = pruner.graph.ties["patch_embed.proj"]
    assert (tie["heads"], tie["width"], len(tie["attentions"])) == (4, 192, 6)   # 4 + 2 class
    small = pruner.prune(0.5, force=True)
    width = small.patch_embed.proj.out_channels
    assert width == int(pruner.masks(0.5)["patch_embed.proj"].sum()) and width % 4 == 0
    for name in tie["attentions"]:
        attn = small.get_submodule(name)
        qkv = [getattr(attn, n).out_features for n in ("qkv", "q", "k", "v") if hasattr(attn, n)]
        assert sum(qkv) == 3 * width and attn.proj.in_features == width
    assert small(x).shape == (2, 10)
