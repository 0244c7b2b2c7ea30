"""The tag head: multi-level attention and bilinear fusion over FashionBERT's hidden states.

The trunk reads ``[CLS] title [SEP] patches`` once per image view; the head sees, per product
and view, the title's token states and the 64 patch states. Three parts, each switchable for
the ablations (:class:`~fashionbert.tagging.config.TaggerConfig`):

1. **Low-level co-attention** (:class:`CoAttention`): the title guides attention over the
   patches (score = w·tanh(W_p p + W_q mean(text))) and the image guides attention over the
   tokens (score = w·tanh(W_t t + W_i mean(patches))), ``glimpses`` maps each. Why: a tag is
   usually about one region (a collar, a print) or one word; the masked means the ablation
   uses blur them with everything else.
2. **Bilinear fusion** (:class:`MFB`, Yu et al. 2017): both attended vectors are projected to
   k·o, multiplied element-wise, sum-pooled over k, passed through a signed square root and
   L2-normalised. Why: tags such as "red floral" depend on interactions of the two sides that
   a concatenation followed by a linear map can only add up.
3. **High-level attention** (:class:`GroupAttention`) over the fused groups (one per glimpse
   and per view), each read beside its agreement with the product's mean group, then a linear
   classifier over the vocabulary (multi-label logits). Why: some views or glimpses are
   uninformative (a glimpse on the background) or wrong (a stray photo of another product).

Masks make missing parts disappear instead of contributing zeros: padded tokens, the patches
of a product without an image, and the empty view slots of products with fewer views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fashionbert.tagging.config import TaggerConfig

NEG_INF = -1e9


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the unmasked entries; all-masked slices give all zeros (never NaN, also in backward)."""
    mask = mask.to(torch.bool)
    weights = torch.softmax(scores.masked_fill(~mask, NEG_INF), dim=dim) * mask
    return weights / weights.sum(dim, keepdim=True).clamp_min(1e-12)


def masked_sparsemax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sparsemax (Martins & Astudillo 2016) over the last dim's unmasked entries.

    The Euclidean projection of the scores onto the simplex: weights sum to 1 like a softmax's,
    but an entry whose score is far enough below the best gets exactly zero. Why: a softmax can
    only shrink a stray photo's weight, and the tags eval's oracle (design item 54) shows that
    halving it wins nothing back; a weighting that can drop a view can. All-masked rows give zeros.
    """
    mask = mask.to(torch.bool)
    z = scores.masked_fill(~mask, NEG_INF)
    ranked, _ = torch.sort(z, dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cumulative = ranked.cumsum(-1)
    support = (1 + k * ranked > cumulative) & (ranked > NEG_INF / 2)
    size = support.sum(-1, keepdim=True).clamp_min(1)
    tau = (cumulative.gather(-1, size - 1) - 1) / size.to(z.dtype)
    return torch.clamp(z - tau, min=0.0) * mask


def masked_gate(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Independent sigmoid gates over the last dim's unmasked entries, normalised to sum to 1.

    Unlike a softmax, equal gates give the masked mean whatever their level, and a unit is only
    pushed down by its own score, not by another unit's being high. Why: a tagger reads every good
    photo of a product and needs their mean (the ablation without the high-level attention is as
    good as a softmax), but should shut out a stray: a per-view keep/drop detector does both
    (design item 56). All-masked rows give zeros.
    """
    gates = torch.sigmoid(scores) * mask.to(scores.dtype)
    return gates / gates.sum(-1, keepdim=True).clamp_min(1e-12)


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``states`` [..., N, H] over the unmasked N ([..., N] mask); zeros when all are masked."""
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(-2) / m.sum(-2).clamp_min(1.0)


def signed_sqrt(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """sign(x)·sqrt(|x|) (power normalisation), with a finite gradient at 0."""
    return torch.sign(x) * torch.sqrt(x.abs() + eps)


@dataclass
class HeadInputs:
    """Trunk states of a batch, padded to [B, V, ...] (V = most views of a product in the batch).

    ``view_mask`` marks real views; a product without an image has one view whose patch mask
    is all off; a product without a title has only [CLS]/[SEP] in its text mask.
    """

    text: torch.Tensor  # [B, V, T, H]
    text_mask: torch.Tensor  # [B, V, T] bool
    patches: torch.Tensor  # [B, V, P, H]
    patch_mask: torch.Tensor  # [B, V, P] bool
    view_mask: torch.Tensor  # [B, V] bool

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> HeadInputs:
        return HeadInputs(self.text.to(device, dtype), self.text_mask.to(device), self.patches.to(device, dtype),
                          self.patch_mask.to(device), self.view_mask.to(device))

    @property
    def batch_size(self) -> int:
        return int(self.text.shape[0])


class MFB(nn.Module):
    """Multi-modal factorised bilinear pooling: z = L2(ssqrt(SumPool_k(U x ∘ V y)))."""

    def __init__(self, image_dim: int, text_dim: int, k: int, o: int, dropout: float = 0.1):
        super().__init__()
        self.k, self.o = k, o
        self.proj_image = nn.Linear(image_dim, k * o)
        self.proj_text = nn.Linear(text_dim, k * o)
        self.dropout = nn.Dropout(dropout)

    def pooled(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The sum-pooled bilinear term before normalisation ([..., o])."""
        joint = self.dropout(self.proj_image(image) * self.proj_text(text))
        return joint.view(*joint.shape[:-1], self.o, self.k).sum(-1)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return F.normalize(signed_sqrt(self.pooled(image, text)), dim=-1)


class ConcatFusion(nn.Module):
    """The ablation of MFB: [image; text] -> linear, so the fused vector is a sum of an image term and a
    text term (no interaction). ``hidden_relu`` adds a ReLU: then it is a one-hidden-layer MLP, which can
    learn interactions by another route than the bilinear product (reported as its own row)."""

    def __init__(self, image_dim: int, text_dim: int, o: int, dropout: float = 0.1, hidden_relu: bool = False):
        super().__init__()
        self.linear = nn.Linear(image_dim + text_dim, o)
        self.dropout = nn.Dropout(dropout)
        self.hidden_relu = hidden_relu

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        fused = self.linear(self.dropout(torch.cat([image, text], dim=-1)))
        return torch.relu(fused) if self.hidden_relu else fused


class GuidedAttention(nn.Module):
    """``glimpses`` additive attention maps over ``units``, each guided by one vector of the other side."""

    def __init__(self, hidden: int, dim: int, glimpses: int):
        super().__init__()
        self.unit_proj = nn.Linear(hidden, dim)
        self.guide_proj = nn.Linear(hidden, dim, bias=False)
        self.score = nn.Linear(dim, glimpses, bias=False)

    def forward(self, units: torch.Tensor, mask: torch.Tensor, guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """units [N, U, H], mask [N, U], guide [N, H] -> attended [N, G, H], weights [N, G, U]."""
        hidden = torch.tanh(self.unit_proj(units) + self.guide_proj(guide).unsqueeze(1))
        weights = masked_softmax(self.score(hidden).transpose(1, 2), mask.unsqueeze(1))
        return weights @ units, weights


class CoAttention(nn.Module):
    """Text-guided attention over patches and image-guided attention over tokens."""

    def __init__(self, hidden: int, dim: int, glimpses: int):
        super().__init__()
        self.over_patches = GuidedAttention(hidden, dim, glimpses)
        self.over_tokens = GuidedAttention(hidden, dim, glimpses)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, patches: torch.Tensor,
                patch_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, T, H], [N, P, H] -> attended image [N, G, H], attended text [N, G, H]."""
        image, _ = self.over_patches(patches, patch_mask, masked_mean(text, text_mask))
        words, _ = self.over_tokens(text, text_mask, masked_mean(patches, patch_mask))
        return image, words


class GroupAttention(nn.Module):
    """High-level attention: one weight per fused group (glimpse x view), masked softmax (or sparsemax).

    With ``consensus`` a group is scored on itself and on its agreement with the product's mean
    group (the element-wise product of the two unit vectors, whose sum is their cosine). Why:
    scored alone, a group cannot tell that it is the odd one out, e.g. a stray photo of another
    product whose joint pass with the title looks like any other view's; beside the consensus
    of the product's views it can (docs/design.md item 47).
    """

    def __init__(self, dim_in: int, dim: int, consensus: bool = False, weights: str = "softmax"):
        super().__init__()
        normalisers = {"softmax": masked_softmax, "sparsemax": masked_sparsemax, "gate": masked_gate}
        if weights not in normalisers:
            raise ValueError(f"group weights must be one of {', '.join(normalisers)}, got {weights!r}")
        self.normalise = normalisers[weights]
        self.proj = nn.Linear(dim_in, dim)
        self.agreement = nn.Linear(dim_in, dim, bias=False) if consensus else None
        self.score = nn.Linear(dim, 1, bias=False)

    def forward(self, groups: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """groups [B, K, o], mask [B, K] -> pooled [B, o], weights [B, K]."""
        hidden = self.proj(groups)
        if self.agreement is not None:
            consensus = F.normalize(masked_mean(groups, mask), dim=-1).unsqueeze(1)
            # x dim: the product of two unit vectors has components ~1/dim; scaled, they are ~1 like the groups
            hidden = hidden + self.agreement(F.normalize(groups, dim=-1) * consensus * groups.shape[-1])
        weights = self.normalise(self.score(torch.tanh(hidden)).squeeze(-1), mask)
        return (weights.unsqueeze(-1) * groups).sum(1), weights


class TaggerHead(nn.Module):
    """Trunk states of a product (all its views) -> multi-label logits over the tag vocabulary."""

    def __init__(self, config: TaggerConfig):
        super().__init__()
        if config.num_tags < 1:
            raise ValueError("TaggerConfig.num_tags must be set (the vocabulary size) before building the head")
        self.config = config
        h = config.hidden_size
        if config.use_low_level_attention:
            self.low_attention = CoAttention(h, config.attention_dim, config.glimpses)
        if config.fusion == "mfb":
            self.fusion: nn.Module = MFB(h, h, config.mfb_k, config.mfb_o, config.dropout)
        else:
            self.fusion = ConcatFusion(h, h, config.mfb_o, config.dropout, hidden_relu=config.fusion == "concat_mlp")
        if config.use_high_level_attention:
            self.high_attention = GroupAttention(config.mfb_o, config.attention_dim, config.view_consensus,
                                                 config.group_weights)
        self.dropout = nn.Dropout(config.dropout)
        # MFB's output is a unit vector (components ~ 1/sqrt(o)): scaled by sqrt(o) the classifier sees
        # unit-variance inputs, as after the concatenation's linear layer; otherwise its weights must grow
        # ~sqrt(o)-fold before any logit is confident, which small catalogs never give them the steps for.
        self.fused_scale = math.sqrt(config.mfb_o) if config.fusion == "mfb" else 1.0
        self.classifier = nn.Linear(config.mfb_o, config.num_tags)

    def fused_groups(self, x: HeadInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused vectors [B, V*G, o] and their mask [B, V*G] (a group of a missing view is masked)."""
        b, v, t, h = x.text.shape
        text, tmask = x.text.reshape(b * v, t, h), x.text_mask.reshape(b * v, t)
        patches, pmask = x.patches.reshape(b * v, -1, h), x.patch_mask.reshape(b * v, -1)
        if self.config.use_low_level_attention:
            image, words = self.low_attention(text, tmask, patches, pmask)
        else:
            image, words = masked_mean(patches, pmask).unsqueeze(1), masked_mean(text, tmask).unsqueeze(1)
        fused = self.fusion(image, words)  # [B*V, G, o]
        g = fused.shape[1]
        return fused.reshape(b, v * g, -1), x.view_mask.unsqueeze(-1).expand(b, v, g).reshape(b, v * g)

    def _pool(self, groups: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled vector [B, o] and group weights [B, K]: the high-level attention, or the masked mean without it."""
        if self.config.use_high_level_attention:
            return self.high_attention(groups, mask)
        return masked_mean(groups, mask), mask.float() / mask.float().sum(-1, keepdim=True).clamp_min(1.0)

    @staticmethod
    def _view_shares(weights: torch.Tensor, view_mask: torch.Tensor) -> torch.Tensor:
        b, v = view_mask.shape
        return weights.view(b, v, -1).sum(-1)

    def logits_and_view_weights(self, x: HeadInputs, scorer_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Multi-label logits [B, tags] and the views' shares [B, V] from one pass (training reads both).

        ``scorer_only``: the shares are computed again on detached fused groups, so a loss on them
        (the injected strays', design item 56) trains the high-level attention's scorer alone: it
        teaches the attention where to look, not what the fused vectors encode. Let through to the
        fusion, that loss reshaped the groups to tell products apart at the expense of their tags
        (validation mAP 0.91 against 0.96).
        """
        groups, mask = self.fused_groups(x)
        pooled, weights = self._pool(groups, mask)
        if scorer_only and self.config.use_high_level_attention:
            weights = self.high_attention(groups.detach(), mask)[1]
        return self.classifier(self.dropout(pooled * self.fused_scale)), self._view_shares(weights, x.view_mask)

    def forward(self, x: HeadInputs) -> torch.Tensor:
        return self.logits_and_view_weights(x)[0]

    def view_weights(self, x: HeadInputs) -> torch.Tensor:
        """Each view's share of the pooled vector, [B, V] (a row sums to 1).

        Why: it shows what the high-level attention does with a product's photos, e.g. how little
        it keeps of a stray photo of another product. Without the high-level attention every real
        view weighs the same (the masked mean), which is what the ablation is compared with.
        """
        return self._view_shares(self._pool(*self.fused_groups(x))[1], x.view_mask)
