"""SGRAF's similarity networks, SGR and SAF (Diao, Zhang, Ma, Lu: "Similarity Reasoning and
Filtration for Image-Text Matching", AAAI 2021): the backbone behind SREM's, NCR's and RCL's
published tables. The similarity of a pair is a network's output over its region–word alignments,
not a dot product:

    regions --FC, l2--> v_1..v_R        words --embedding, bi-GRU (directions averaged), l2--> t_1..t_L
    global vectors v̄, t̄: self-attention over the regions / the real words (AttentionPool)
    alignment nodes of a pair (l2-normalised, sim_dim each): the global one from (v̄ - t̄)², one per
        word l from (a_l - t_l)², a_l the regions as word l attends to them (SCAN's text-to-image
        attention, inverse temperature 9)
    SGR: graph-reasoning steps over the nodes, then the global node is scored;
    SAF: the nodes gated (BatchNorm, sigmoid, l1-norm) and summed, the sum scored;
    score: FC to one value, sigmoid: s in (0, 1).

"SGRAF" averages the similarities of an SGR and an SAF model trained apart (ensemble.py).
Written from the paper; the BatchNorms of the image self-attention, the dropouts and the
initialisation follow the authors' released code, so the parameter counts match theirs
(docs/training.md: SGRAF).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from srem_kernels.train.model import GRUTextEncoder

REASONINGS = ("sgr", "saf")  # --model's similarity networks
SCAN_SMOOTH = 9.0  # SCAN's inverse temperature of the word-to-region softmax
SCAN_SLOPE = 0.1  # SCAN clips negative word–region scores with this leaky ReLU
DROPOUT = 0.4  # on the embedded words and inside the self-attention, as SGRAF trains
FEATURE_WORDS = 4  # a feature caption (the synthetic benchmarks') is read as this many "words"


def _xavier(module: nn.Module) -> None:
    """SGRAF's initialisation of its linear layers: Xavier-uniform weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def _real(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """(N, n) mask of the positions below each length."""
    return torch.arange(n, device=lengths.device)[None] < lengths[:, None]


class AttentionPool(nn.Module):
    """A global vector from local ones by self-attention, their mean as the query: weights
    softmax_k(w · (tanh(A x_k) ⊙ tanh(B x̄))) over the real locals, output the weighted sum of the
    locals, l2-normalised. `regions` (the image side): SGRAF batch-normalises A x over the region
    axis (2 parameters a region) and B x̄ over its features; the text side has no BatchNorm."""

    def __init__(self, dim: int, regions: int | None = None):
        super().__init__()
        self.local = nn.Linear(dim, dim)
        self.local_norm = nn.BatchNorm1d(regions) if regions else nn.Identity()
        self.query = nn.Linear(dim, dim)
        self.query_norm = nn.BatchNorm1d(dim) if regions else nn.Identity()
        self.weight = nn.Linear(dim, 1)
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, K, dim) locals; mask: (N, K), the real ones (None: all)."""
        mean = x.mean(1) if mask is None else (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        keys = self.dropout(torch.tanh(self.local_norm(self.local(x))))
        query = self.dropout(torch.tanh(self.query_norm(self.query(mean))))
        logits = self.weight(keys * query[:, None]).squeeze(-1)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return F.normalize(torch.einsum("nk,nkd->nd", logits.softmax(1), x), dim=-1)


class GraphReasoningStep(nn.Module):
    """One SGR step over a pair's alignment nodes: edge weights softmax_q((W_q n_p) · (W_k n_q))
    over the real nodes q, then n_p <- ReLU(W_g sum_q e_pq n_q)."""

    def __init__(self, dim: int):
        super().__init__()
        self.query, self.key, self.update = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, nodes: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """nodes: (images, captions, N, dim); real: (captions, N)."""
        edges = self.query(nodes) @ self.key(nodes).transpose(-1, -2)
        edges = edges.masked_fill(~real[None, :, None, :], float("-inf")).softmax(-1)
        return F.relu(self.update(edges @ nodes))


class AttentionFiltration(nn.Module):
    """SAF: gates g_p = sigmoid(BN(w · n_p)) l1-normalised over the pair's real nodes; the gated
    sum of the nodes, l2-normalised. In training the BatchNorm normalises each caption's gate
    logits over the batch's images and the caption's real nodes — the statistics SGRAF's
    caption-by-caption loop gives; torch's BatchNorm would pool the padding too, so they are taken
    here. The running statistics that evaluation uses follow the mean of a batch's per-caption
    statistics, one update per batch (SGRAF's loop updates once per caption)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Linear(dim, 1)
        self.norm = nn.BatchNorm1d(1)  # its weight, bias and running statistics

    def forward(self, nodes: torch.Tensor, real: torch.Tensor):
        """nodes: (images, captions, N, dim); real: (captions, N). Returns the filtered vectors
        (images, captions, dim) and, in training, the captions' (means, unbiased variances)."""
        logits = self.gate(nodes).squeeze(-1)
        if self.training:
            m = real.to(logits.dtype)
            count = m.sum(1) * logits.shape[0]
            mean = (logits * m).sum((0, 2)) / count
            var = ((logits - mean[:, None]) ** 2 * m).sum((0, 2)) / count
            stats = (mean.detach(), (var * count / (count - 1)).detach())
            mean, var = mean[:, None], var[:, None]
        else:
            mean, var, stats = self.norm.running_mean, self.norm.running_var, None
        z = (logits - mean) * torch.rsqrt(var + self.norm.eps) * self.norm.weight + self.norm.bias
        gates = torch.sigmoid(z) * real
        gates = gates / gates.sum(-1, keepdim=True)
        return F.normalize((gates[..., None] * nodes).sum(-2), dim=-1), stats

    @torch.no_grad()
    def track(self, means: torch.Tensor, variances: torch.Tensor) -> None:
        m = self.norm.momentum
        self.norm.running_mean.mul_(1 - m).add_(m * means.mean())
        self.norm.running_var.mul_(1 - m).add_(m * variances.mean())
        self.norm.num_batches_tracked += 1


class SimilarityNetwork(nn.Module):
    """s(image, caption) in (0, 1) from l2-normalised region and word features (`embed_dim`)."""

    def __init__(self, embed_dim: int, sim_dim: int, regions: int, reasoning: str, sgr_steps: int = 3):
        super().__init__()
        if reasoning not in REASONINGS:
            raise ValueError(f"reasoning must be one of {', '.join(REASONINGS)}; got {reasoning!r}")
        self.image_global = AttentionPool(embed_dim, regions)
        self.text_global = AttentionPool(embed_dim)
        self.local_map = nn.Linear(embed_dim, sim_dim)
        self.global_map = nn.Linear(embed_dim, sim_dim)
        if reasoning == "sgr":
            self.reasoning = nn.ModuleList(GraphReasoningStep(sim_dim) for _ in range(sgr_steps))
        else:
            self.filtration = AttentionFiltration(sim_dim)
        self.score = nn.Linear(sim_dim, 1)
        _xavier(self)

    def forward(self, regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor, chunk: int) -> torch.Tensor:
        """The n_img × n_cap similarity of regions (n_img, R, D) and words (n_cap, L, D) of the given
        lengths, in blocks of at most `chunk` pairs: the alignment tensors (pairs × words × D) of
        one block at a time. In training a block holds every image (SAF's statistics are per caption
        over the batch's images), so it has max(1, chunk // n_img) captions."""
        lengths = lengths.to(words.device)
        real = _real(lengths, words.shape[1])
        img_glob, txt_glob = self.image_global(regions), self.text_global(words, real)
        n_img = len(regions)
        rows = n_img if self.training else min(n_img, chunk)
        order = torch.argsort(lengths, stable=True)  # captions of like length share a block: less padding
        cols, stats = [], []
        for c in order.split(max(1, chunk // rows)):
            n = int(lengths[c].max())
            w, r, tg = words[c, :n], real[c, :n], txt_glob[c]
            blocks = [self._block(regions[i : i + rows], img_glob[i : i + rows], w, r, tg) for i in range(0, n_img, rows)]
            cols.append(torch.cat([s for s, _ in blocks]))
            stats += [st for _, st in blocks if st is not None]
        if stats:
            self.filtration.track(torch.cat([m for m, _ in stats]), torch.cat([v for _, v in stats]))
        return torch.cat(cols, dim=1)[:, torch.argsort(order)]

    def _block(self, regions, img_glob, words, real, txt_glob):
        """Similarities (images, captions) of one block, and SAF's batch statistics in training."""
        # each word attends to the image's regions: SCAN's leaky-clipped scores, l2-normalised over
        # the caption's words for each region, then a softmax over the regions at temperature 1/9
        scores = F.leaky_relu(torch.einsum("ctd,ird->ictr", words, regions), SCAN_SLOPE) * real[None, :, :, None]
        attn = (SCAN_SMOOTH * F.normalize(scores, dim=2)).softmax(-1)
        attended = F.normalize(torch.einsum("ictr,ird->ictd", attn, regions), dim=-1)
        local = F.normalize(self.local_map((attended - words) ** 2), dim=-1)
        glob = F.normalize(self.global_map((img_glob[:, None] - txt_glob[None]) ** 2), dim=-1)
        nodes = torch.cat([glob[:, :, None], local], dim=2)  # node 0: the global alignment
        real = F.pad(real, (1, 0), value=True)
        stats = None
        if hasattr(self, "reasoning"):
            for step in self.reasoning:
                nodes = step(nodes, real)
            vec = nodes[:, :, 0]
        else:
            vec, stats = self.filtration(nodes, real)
        return torch.sigmoid(self.score(vec)).squeeze(-1), stats


class FeatureWords(nn.Module):
    """A feature caption (N × d) read as FEATURE_WORDS "words" of d / FEATURE_WORDS features, each
    mapped to word_dim: what the bi-GRU reads where there are no tokens (the synthetic benchmarks)."""

    def __init__(self, dim: int, word_dim: int, words: int = FEATURE_WORDS):
        super().__init__()
        if dim % words:
            raise ValueError(f"a feature caption of {dim} features does not split into {words} words")
        self.words = words
        self.proj = nn.Linear(dim // words, word_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.reshape(len(x), self.words, -1))


class SimilarityModel(nn.Module):
    """Regions and words encoded apart, their similarity by a SimilarityNetwork. forward(images,
    captions) is the B×B similarity the loss takes (srem_kernels.loss_from_similarity)."""

    pairwise = True  # the trainer's cue: the similarity is this network's, not a dot product

    def __init__(self, img_dim: int, regions: int, text: GRUTextEncoder, *, embed_dim: int, sim_dim: int,
                 reasoning: str, sgr_steps: int, chunk: int):
        super().__init__()
        self.img_encoder = nn.Linear(img_dim, embed_dim)
        self.txt_encoder = text
        self.sim_encoder = SimilarityNetwork(embed_dim, sim_dim, regions, reasoning, sgr_steps)
        self.reasoning, self.chunk = reasoning, chunk
        _xavier(self.img_encoder)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, R, img_dim) region features -> (N, R, embed_dim), l2-normalised."""
        return F.normalize(self.img_encoder(images), dim=-1)

    def encode_captions(self, captions) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, L, embed_dim) word features, l2-normalised (zero past each length), and the lengths."""
        words, lengths = self.txt_encoder.words(captions)
        return F.normalize(words, dim=-1), lengths

    def similarity(self, regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.sim_encoder(regions, words, lengths, self.chunk)

    def forward(self, images, captions) -> torch.Tensor:
        return self.similarity(self.encode_images(images), *self.encode_captions(captions))

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the image encoder, the text encoder and the similarity network."""
        return {name: sum(p.numel() for p in part.parameters())
                for name, part in (("image encoder", self.img_encoder), ("text encoder", self.txt_encoder),
                                   ("similarity network", self.sim_encoder))}


def build(dataset, *, reasoning: str, embed_dim: int, sim_dim: int, word_dim: int, sgr_steps: int,
          chunk: int) -> SimilarityModel:
    """The SGR or SAF model for `dataset`'s shapes: region features (N×R×d images); token captions
    (embedding table of the vocabulary) or feature captions (FeatureWords)."""
    images = dataset.train.images
    if len(images.shape) != 3:
        raise ValueError(f"model {reasoning} reads region features (N×R×d images); {dataset.name}'s images are "
                         f"N×{images.shape[-1]}: use --model vse")
    if dataset.vocab_size:
        embed = nn.Embedding(dataset.vocab_size, word_dim, padding_idx=0)
        nn.init.uniform_(embed.weight, -0.1, 0.1)  # SGRAF's initialisation (the padding row is never read)
    else:
        try:
            embed = FeatureWords(dataset.train.captions.shape[-1], word_dim)
        except ValueError as err:
            raise ValueError(f"model {reasoning}: {dataset.name}'s captions: {err}") from None
    text = GRUTextEncoder(dataset.vocab_size, embed_dim, word_dim, embed=embed, dropout=DROPOUT)
    return SimilarityModel(images.shape[-1], images.shape[1], text, embed_dim=embed_dim, sim_dim=sim_dim,
                           reasoning=reasoning, sgr_steps=sgr_steps, chunk=chunk)
