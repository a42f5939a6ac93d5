"""MaskGit: a frozen VQGAN tokenizer plus the bidirectional transformer, and the MVTM objective."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.decoding import DecodeSettings, gamma_func
from models.transformer import BidirectionalTransformer


def mvtm_loss(logits, target, mask, num_codes, label_smoothing=0.1, masked_only=True, normalizer=None):
    """Cross-entropy of the transformer's logits [B, N, K+1] against VQGAN tokens [B, N].

    Only the K real codes are classes (the mask id K is never a class or a target). Averaged over the
    masked positions (mask [B, N], True = masked), or over all positions with masked_only=False.
    `normalizer` replaces the count in that average (e.g. the masked count of a global DDP batch).
    """
    ce = F.cross_entropy(logits[..., :num_codes].flatten(0, 1).float(), target.flatten(),
                         label_smoothing=label_smoothing, reduction='none').view_as(target)  # [B, N]
    w = mask.to(ce.dtype) if masked_only else torch.ones_like(ce)
    return (ce * w).sum() / (w.sum().clamp(min=1) if normalizer is None else normalizer)


def masked_accuracy(logits, target, mask, num_codes):
    """(correct, count) of argmax over the real codes at masked positions, as tensors."""
    correct = (logits[..., :num_codes].argmax(-1) == target) & mask
    return correct.sum(), mask.sum()


class MaskGit(nn.Module):
    """model_param: the `model_param` section of configs/MaskGit*.yml.

    `vqgan` is the frozen tokenizer (models.vqgan.load_vqgan), or None when only cached tokens are used
    (training reads the token cache, so its steps never run the VQGAN).
    """

    def __init__(self, model_param, vqgan=None):
        super().__init__()
        p = model_param
        tp = p['Transformer_param']
        for key in ('num_image_tokens', 'num_codebook_vectors'):
            if tp[key] != p[key]:
                raise ValueError(f"MaskGit config: Transformer_param.{key}={tp[key]} differs from {key}={p[key]}")
        self.num_image_tokens = p['num_image_tokens']
        self.num_codebook_vectors = p['num_codebook_vectors']
        self.mask_token_id = self.num_codebook_vectors
        # training masks follow the config's schedule; decoding reads its settings from DecodeSettings
        self.gamma = gamma_func(p.get('gamma_type', DecodeSettings.mask_func))
        if vqgan is not None:
            check_vqgan_matches(vqgan, p)
            vqgan.eval().requires_grad_(False)
        self.vqgan = vqgan
        self.transformer = BidirectionalTransformer(tp)

    @torch.no_grad()
    def encode_to_z(self, x):
        """Images [B, 3, H, W] (normalised) -> (z_q [B, D, h, w], tokens [B, h*w] long)."""
        if self.vqgan is None:
            raise RuntimeError("MaskGit was built without a VQGAN; encode_to_z needs one")
        z_q, indices, _ = self.vqgan.encode(x)
        return z_q, indices.view(x.shape[0], -1)

    def num_masked(self, r, n=None):
        """Masked positions per sample, ceil(gamma(r) * n), for mask ratios r [B] and maskable counts n [B]
        (default: every token) -> [B] long."""
        n = self.num_image_tokens if n is None else n
        return torch.ceil(self.gamma(r.double()) * n).long().clamp(min=0).clamp(max=n)

    def mask_tokens(self, z, r=None, scores=None, region=None):
        """Mask ceil(gamma(r_b) * n_b) random positions of each row b of tokens z [B, N].

        r [B] in [0, 1) and scores [B, N] are drawn uniformly when not given (one ratio per sample).
        region [B, N] bool (default: all) limits masking to a hole: n_b = its size, and positions outside
        it stay visible, as in inpainting, where step t shows the known tokens, the hole tokens revealed so
        far, and masks the rest. The masked positions of row b are its n_b lowest scores in the region.
        Returns (masked tokens [B, N], mask [B, N] bool, True = masked).
        """
        b, n = z.shape
        r = torch.rand(b, device=z.device) if r is None else r.to(z.device)
        scores = torch.rand(b, n, device=z.device) if scores is None else scores.to(z.device)
        if n != self.num_image_tokens:
            raise ValueError(f"got {n} tokens per image, the config says num_image_tokens={self.num_image_tokens}")
        count = None
        if region is not None:
            region = region.to(z.device)
            scores = scores.masked_fill(~region, 2.0)      # uniforms are < 1: outside the hole ranks last
            count = region.sum(1)
        rank = scores.argsort(1).argsort(1)               # [B, N] rank of each position's score
        mask = rank < self.num_masked(r, count)[:, None]  # [B, N]
        return torch.where(mask, torch.full_like(z, self.mask_token_id), z), mask

    def forward(self, x, r=None, scores=None, region=None, context=None, labels=None):
        """x: images [B, 3, H, W] (encoded by the frozen VQGAN) or tokens [B, N] long (cached).

        region [B, N] bool: a hole to mask in (mask_tokens); context [B, N] long: the tokens shown outside
        it (those of the masked image, what inpainting sees), default the image's own. labels [B]: class ids
        of a conditional transformer (None: the null class).
        Returns (logits [B, N, K+1], target tokens [B, N], mask [B, N] bool, True = masked).
        """
        z = x if x.dtype == torch.long else self.encode_to_z(x)[1]
        shown = z if context is None else torch.where(region, z, context.to(z.device))
        masked, mask = self.mask_tokens(shown, r, scores, region)
        return self.transformer(masked, labels), z, mask


def check_vqgan_matches(vqgan, model_param, source='MaskGit config'):
    """One-line error when the VQGAN's codebook or latent grid disagrees with the MaskGit config."""
    k, n = model_param['num_codebook_vectors'], model_param['num_image_tokens']
    if vqgan.num_codebook_vectors != k:
        raise ValueError(f"{source}: num_codebook_vectors={k} but the VQGAN has {vqgan.num_codebook_vectors} codes")
    if vqgan.latent_resolution ** 2 != n:
        raise ValueError(f"{source}: num_image_tokens={n} but the VQGAN's latent grid is "
                         f"{vqgan.latent_resolution}x{vqgan.latent_resolution}")


def transformer_state_dict(ckpt):
    """The transformer state_dict of a loaded checkpoint: the course's plain one, or train_state.pt's dict."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get('transformer'), dict):
        return ckpt['transformer']
    return ckpt
