"""A VSE∞-style dual encoder with L2-normalised outputs: MLPs over (region) features, a bi-GRU
over token ids for the precomputed layout."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MLPEncoder(nn.Module):
    """Linear projection plus a two-layer MLP residual (VSE∞'s feature encoder); region inputs
    (N×R×d) are encoded per region and mean-pooled."""

    def __init__(self, in_dim: int, embed_dim: int, hidden: int = 512):
        super().__init__()
        self.proj = nn.Linear(in_dim, embed_dim)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x) + self.mlp(x)
        return h.mean(dim=1) if h.dim() == 3 else h


class GRUTextEncoder(nn.Module):
    """Word embeddings, a bidirectional GRU (directions averaged), mean over the real tokens.
    `embed` replaces the embedding table (SGRAF's feature captions: sgraf.FeatureWords);
    `dropout` acts on the embedded words (SGRAF's 0.4; none for the dual encoder)."""

    def __init__(self, vocab_size: int, embed_dim: int, word_dim: int = 300, *, embed: nn.Module | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0) if embed is None else embed
        self.gru = nn.GRU(word_dim, embed_dim, batch_first=True, bidirectional=True)
        self.dropout = dropout

    def words(self, captions) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-word features (N, L, embed_dim), zero past each caption's length, and the lengths.
        `captions`: (token ids, lengths), or N×d features that `embed` reads as words."""
        if isinstance(captions, tuple):
            tokens, lengths = captions
            x = self.embed(tokens)
        else:
            x = self.embed(captions)
            lengths = torch.full((len(x),), x.shape[1], dtype=torch.long)
        if self.dropout:  # skipped at 0: the dual encoder's runs draw no random numbers here
            x = F.dropout(x, self.dropout, self.training)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True)
        d = out.shape[-1] // 2
        return (out[..., :d] + out[..., d:]) / 2, lengths

    def forward(self, captions: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        out, lengths = self.words(captions)
        return out.sum(dim=1) / lengths.to(out.device, out.dtype)[:, None]


class DualEncoder(nn.Module):
    pairwise = False  # the similarity is the embeddings' dot product (sgraf.SimilarityModel: a network's)

    def __init__(self, img_encoder: nn.Module, txt_encoder: nn.Module):
        super().__init__()
        self.img_encoder, self.txt_encoder = img_encoder, txt_encoder

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.img_encoder(images), dim=-1)

    def encode_captions(self, captions) -> torch.Tensor:
        return F.normalize(self.txt_encoder(captions), dim=-1)

    def forward(self, images, captions) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_images(images), self.encode_captions(captions)


def build(dataset, embed_dim: int) -> DualEncoder:
    """The dual encoder for `dataset`'s feature shapes."""
    img_dim = dataset.train.images.shape[-1]
    if dataset.vocab_size:
        txt = GRUTextEncoder(dataset.vocab_size, embed_dim)
    else:
        txt = MLPEncoder(dataset.train.captions.shape[-1], embed_dim)
    return DualEncoder(MLPEncoder(img_dim, embed_dim), txt)
