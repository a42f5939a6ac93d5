"""Bidirectional transformer for Masked Visual Token Modeling, in the course lab's layout.

Non-attention keys and shapes equal the course's (`../shared/lab/transformer_state_dict_keys.txt`
with configs/MaskGit.yml), so a student's transformer checkpoint loads with strict=True as long as
its attention keys are ours. Attention is written by hand (never torch.nn.MultiheadAttention).
Class conditioning is optional (Transformer_param num_classes > 0); without it nothing changes.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MultiHeadAttention(nn.Module):
    """Self-attention: fused Q/K/V projection, split into heads, attend, merge heads, out projection.

    `explicit=True` computes softmax(QK^T / sqrt(d)) V step by step (the reference the SDPA path is
    tested against); the default uses F.scaled_dot_product_attention, which picks the flash /
    memory-efficient kernels on GPU.
    """

    def __init__(self, dim=768, num_heads=16, attn_drop=0.1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim, self.attn_drop = num_heads, dim // num_heads, attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)  # Q, K and V projections in one matmul
        self.out = nn.Linear(dim, dim)
        self.explicit = False

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, N, d]
        p = self.attn_drop if self.training else 0.0
        if self.explicit:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # [B, H, N, N]
            y = F.dropout(att.softmax(-1), p) @ v                         # [B, H, N, d]
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)      # [B, H, N, d]
        return self.out(y.transpose(1, 2).reshape(b, n, c))              # merge heads: [B, N, C]


class TransformerBlock(nn.Module):
    """Post-LN encoder block: x = LN1(x + drop(attn(x))); x = LN2(x + MLP(x))."""

    def __init__(self, dim=768, hidden_dim=1536, num_heads=16, dropout=0.1):
        super().__init__()
        self.MultiHeadAttention = MultiHeadAttention(dim, num_heads, dropout)
        self.LayerNorm1 = nn.LayerNorm(dim, eps=1e-12)
        self.LayerNorm2 = nn.LayerNorm(dim, eps=1e-12)
        self.MLP = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim), nn.Dropout(dropout))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = self.LayerNorm1(x + self.dropout(self.MultiHeadAttention(x)))
        return self.LayerNorm2(x + self.MLP(x))


class ClassEmbedding(nn.Module):
    """C + 1 class vectors [C+1, dim], the last one the null class ("no class"), zero-initialised.

    The class names (sorted, from the training set's labels.json) travel in the state dict as this
    module's extra state (key `class_emb._extra_state`), so a checkpoint maps names <-> ids by itself.
    """

    def __init__(self, num_classes, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_classes + 1, dim))  # no RNG drawn: other weights unchanged
        self.names = None  # class names, id order; None until training sets them (ids only)

    def forward(self, labels):
        return self.weight[labels]  # [B] -> [B, dim]

    def get_extra_state(self):
        return {'class_names': self.names}

    def set_extra_state(self, state):
        names = state.get('class_names')
        if names is not None and len(names) != len(self.weight) - 1:
            raise ValueError(f"the checkpoint names {len(names)} classes but the model has num_classes "
                             f"{len(self.weight) - 1}")
        self.names = names


class BidirectionalTransformer(nn.Module):
    """tokens [B, N] long in 0..K (K = num_codebook_vectors is the mask id) -> logits [B, N, K+1].

    Transformer_param: num_image_tokens, num_codebook_vectors, dim, n_layers, hidden_dim, and
    optionally num_heads (16), dropout (0.1), both absent from the course's config, and num_classes
    (0: unconditional).

    Class conditioning (num_classes C > 0): `class_emb`, a table of C + 1 vectors apart from the token
    embedding (id C = the null class), and each image's class vector is added to the embedding of every
    position, before the embedding LayerNorm. Added rather than a prefix token: the sequence, positions
    and attention stay those of the unconditional model, an unconditional model has neither the table
    nor any other new key (its state dict, initial weights and logits are unchanged), and a zero table
    (its initial value) leaves the logits exactly those of the unconditional model it starts from.
    """

    def __init__(self, Transformer_param):
        super().__init__()
        p = Transformer_param
        n, k, dim = p['num_image_tokens'], p['num_codebook_vectors'], p['dim']
        dropout = p.get('dropout', 0.1)
        self.num_image_tokens, self.num_codebook_vectors = n, k
        # registration order follows the course's state_dict
        self.pos_emb = nn.Parameter(nn.init.trunc_normal_(torch.zeros(n, dim), 0.0, 0.02))
        self.bias = nn.Parameter(torch.zeros(n, k + 1))  # per-position output bias
        self.tok_emb = nn.Embedding(k + 1, dim)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, p['hidden_dim'], p.get('num_heads', 16), dropout)
                                      for _ in range(p['n_layers'])])
        self.Token_Prediction = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=1e-12))
        self.LN = nn.LayerNorm(dim, eps=1e-12)
        self.drop = nn.Dropout(dropout)
        self.apply(self._init_weights)
        self.num_classes = p.get('num_classes', 0)
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 0:
            raise ValueError(f"Transformer_param.num_classes must be an integer >= 0, got {self.num_classes!r}")
        self.class_emb = ClassEmbedding(self.num_classes, dim) if self.num_classes else None  # after the init

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, 'bias', None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def flops_per_token(self, n=None):
        """Matmul FLOPs of one forward pass per token over a sequence of n tokens (default N); a
        training step costs 3x this (the backward pass is twice the forward)."""
        n = n or self.num_image_tokens
        d, k = self.tok_emb.embedding_dim, self.num_codebook_vectors
        h = self.blocks[0].MLP[0].out_features
        per_layer = 2 * (4 * d * d + 2 * d * h) + 4 * n * d  # QKV + out, MLP; QK^T and AV over n keys
        return len(self.blocks) * per_layer + 2 * (d * d + d * (k + 1))  # + Token_Prediction, tied head

    def set_explicit_attention(self, explicit):
        for blk in self.blocks:
            blk.MultiHeadAttention.explicit = explicit

    def with_class_embedding(self, state_dict):
        """An unconditional transformer's state dict completed with this model's class embedding (zero at
        init: this model then computes exactly that model's logits, whatever the class), for --init-from.
        Returns (state dict, whether class_emb keys were added)."""
        if self.class_emb is None or any(k.startswith('class_emb.') for k in state_dict):
            return state_dict, False
        own = {k: v for k, v in self.state_dict().items() if k.startswith('class_emb.')}
        return {**state_dict, **own}, True

    def forward(self, tokens, labels=None):
        """tokens [B, N]; labels [B] class ids in 0..num_classes (num_classes itself = the null class), None =
        the null class on a conditional model (and the only choice on an unconditional one) -> [B, N, K+1]."""
        b, n = tokens.shape
        x = self.tok_emb(tokens) + self.pos_emb[:n]                        # [B, N, C]
        if self.class_emb is not None:
            if labels is None:
                labels = torch.full((b,), self.num_classes, device=tokens.device)
            x = x + self.class_emb(labels)[:, None]                        # [B, 1, C]: each image's, every position
        elif labels is not None:
            raise ValueError("class labels given to an unconditional transformer (no Transformer_param num_classes)")
        x = self.drop(self.LN(x))                                          # [B, N, C]
        x = self.Token_Prediction(self.blocks(x))                          # [B, N, C]
        return x @ self.tok_emb.weight.t() + self.bias[:n]                 # tied head: [B, N, K+1]


def require_classes(transformer, what, config, use='a class'):
    """One-line ValueError naming `what` (a flag and its value) when the model built from config is unconditional."""
    if transformer.class_emb is None:
        raise ValueError(f"{what}: the model of {config} is unconditional (no Transformer_param num_classes); "
                         f"{use} needs a conditional one")


def class_id(transformer, given, config, what=None):
    """The class id of `--class NAME|ID` on this transformer: a name of its checkpoint's classes, else an id in
    0..num_classes-1. One-line ValueErrors that start with `what` (default '--class GIVEN'; config: what the
    model was built from)."""
    what = what or f"--class {given}"
    require_classes(transformer, what, config)
    names, c = transformer.class_emb.names, transformer.num_classes
    if names and given in names:
        return names.index(given)
    if given.isdigit():
        if int(given) >= c:
            raise ValueError(f"{what}: class ids run from 0 to {c - 1}")
        return int(given)
    valid = f"one of {', '.join(names)}" if names else f"an id 0..{c - 1} (the checkpoint has no class names)"
    raise ValueError(f"{what}: unknown class; use {valid}")


def check_guidance(transformer, cfg_scale, config):
    """One-line ValueError for guidance (--cfg-scale > 0) asked of an unconditional model (built from config)."""
    if cfg_scale > 0:
        require_classes(transformer, f"--cfg-scale {cfg_scale}", config, 'guidance')


def remap_codes(state_dict, new_tokens, old_tokens, k_new):
    """A transformer state dict over an old tokenizer's K_old codes moved onto a new tokenizer's k_new codes, to
    start training on the new codes from what the old model knows (--init-codes-from).

    new_tokens, old_tokens [S, N]: the two tokenizers' tokens of the same images. New code j takes the input
    embedding of the old code i = m(j) it most often shares a position with, and the output bias of i plus
    log p(j | i), p(j | i) = n_j / sum of n_j' over the new codes j' with m(j') = i (counts + 1): the tied head then
    gives each group of new codes exactly the probability the old model gave its old code. The mask token (last
    row) keeps its embedding; every other weight is copied. Returns (state dict, m [k_new] long)."""
    tok, bias = state_dict['tok_emb.weight'], state_dict['bias']                   # [K_old+1, C], [N, K_old+1]
    k_old = tok.shape[0] - 1
    if new_tokens.shape != old_tokens.shape:
        raise ValueError(f"tokens of the two tokenizers differ in shape: {tuple(new_tokens.shape)} and "
                         f"{tuple(old_tokens.shape)}")
    pairs = new_tokens.long().flatten() * k_old + old_tokens.long().flatten()
    counts = torch.bincount(pairs, minlength=k_new * k_old).view(k_new, k_old)     # [k_new, K_old]
    m = counts.argmax(1)                                                            # [k_new]
    n = counts.sum(1).double() + 1                                                  # [k_new], unseen codes: 1
    group = torch.zeros(k_old, dtype=torch.float64).index_add_(0, m, n)            # [K_old]
    log_p = (n / group[m]).log().to(bias.dtype)                                     # log p(j | m(j))
    out = dict(state_dict)
    out['tok_emb.weight'] = torch.cat([tok[m], tok[-1:]])                           # [k_new+1, C]
    out['bias'] = torch.cat([bias[:, m] + log_p, bias[:, -1:]], 1)                  # [N, k_new+1]
    return out, m
