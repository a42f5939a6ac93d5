"""VQGAN tokenizer with the course lab's module layout (a student's VQGAN.pt loads with strict=True).

Layout (derived from the course's state_dict manifest, indices are `encoder.model.N` / `decoder.model.N`):
  encoder: conv_in, stages of `enc_res_blocks` residual blocks (channels enc_channels[i] -> [i+1]),
           a downsample after every (stages // log2(f))-th stage counted back from the last (the course:
           after stages 2 and 4 of 5), then res, attention, res, GroupNorm, Swish, conv to latent_dim.
  decoder: conv_in, res, attention, res, stages of `dec_res_blocks` residual blocks over
           reversed(dec_channels) (attention after each block while at latent resolution), an upsample
           after every (stages // log2(f))-th stage from the first (the course: after stages 0 and 2 of 5),
           GroupNorm, conv to image_channels.
Optional model_param keys (absent from the course config, defaults reproduce it): gn_groups (32),
enc_res_blocks (2), dec_res_blocks (3), l2_codes (False), restart_every (0 = off), restart_threshold (1).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import load_checkpoint, load_config, load_state_dict_checked


class GroupNorm(nn.Module):
    def __init__(self, channels, groups=32):
        super().__init__()
        if channels % groups:
            raise ValueError(f"GroupNorm: {channels} channels are not divisible by gn_groups={groups}")
        self.gn = nn.GroupNorm(groups, channels, eps=1e-6)

    def forward(self, x):
        return self.gn(x)


class Swish(nn.Module):
    def forward(self, x):
        return F.silu(x)


class ResidualBlock(nn.Module):
    def __init__(self, in_channels, out_channels, groups=32):
        super().__init__()
        self.block = nn.Sequential(
            GroupNorm(in_channels, groups), Swish(), nn.Conv2d(in_channels, out_channels, 3, 1, 1),
            GroupNorm(out_channels, groups), Swish(), nn.Conv2d(out_channels, out_channels, 3, 1, 1))
        if in_channels != out_channels:
            self.channel_up = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        skip = self.channel_up(x) if hasattr(self, 'channel_up') else x
        return skip + self.block(x)


class NonLocalBlock(nn.Module):
    """Single-head self-attention over the H*W positions."""

    def __init__(self, channels, groups=32):
        super().__init__()
        self.norm = GroupNorm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        h_ = self.norm(x)
        q, k, v = (m(h_).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))  # [B, HW, C]
        a = F.scaled_dot_product_attention(q, k, v)  # [B, HW, C], softmax(q k^T / sqrt(C)) v
        return x + self.proj_out(a.transpose(1, 2).reshape(b, c, h, w))


class DownSampleBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right/bottom so the stride-2 conv halves exactly


class UpSampleBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))


def _num_scales(p):
    f = p['img_resolution'] // p['latent_resolution']
    if f < 1 or p['latent_resolution'] * f != p['img_resolution'] or f & (f - 1):
        raise ValueError(f"img_resolution {p['img_resolution']} / latent_resolution {p['latent_resolution']} "
                         f"must be a power of two")
    return int(math.log2(f))


class Encoder(nn.Module):
    def __init__(self, p):
        super().__init__()
        ch, g, n_down = list(p['enc_channels']), p.get('gn_groups', 32), _num_scales(p)
        n_stages = len(ch) - 1
        if n_down > n_stages:
            raise ValueError(f"enc_channels needs at least {n_down + 1} entries for {n_down} downsamples")
        every = n_stages // n_down if n_down else 0
        layers = [nn.Conv2d(p['image_channels'], ch[0], 3, 1, 1)]
        for i in range(n_stages):
            c_in = ch[i]
            for _ in range(p.get('enc_res_blocks', 2)):
                layers.append(ResidualBlock(c_in, ch[i + 1], g))
                c_in = ch[i + 1]
            back = n_stages - 1 - i  # mirrors the decoder's upsampling positions
            if n_down and back % every == 0 and back // every < n_down:
                layers.append(DownSampleBlock(ch[i + 1]))
        c = ch[-1]
        layers += [ResidualBlock(c, c, g), NonLocalBlock(c, g), ResidualBlock(c, c, g),
                   GroupNorm(c, g), Swish(), nn.Conv2d(c, p['latent_dim'], 3, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)  # [B, 3, H, W] -> [B, D, H/f, W/f]


class Decoder(nn.Module):
    def __init__(self, p):
        super().__init__()
        ch, g, n_up = list(reversed(p['dec_channels'])), p.get('gn_groups', 32), _num_scales(p)
        if n_up > len(ch):
            raise ValueError(f"dec_channels needs at least {n_up} entries for {n_up} upsamples")
        every = len(ch) // n_up if n_up else 0
        c_in = ch[0]
        layers = [nn.Conv2d(p['latent_dim'], c_in, 3, 1, 1),
                  ResidualBlock(c_in, c_in, g), NonLocalBlock(c_in, g), ResidualBlock(c_in, c_in, g)]
        ups = 0
        for i, c_out in enumerate(ch):
            for _ in range(p.get('dec_res_blocks', 3)):
                layers.append(ResidualBlock(c_in, c_out, g))
                c_in = c_out
                if ups == 0:  # still at latent resolution
                    layers.append(NonLocalBlock(c_in, g))
            if ups < n_up and i % every == 0:
                layers.append(UpSampleBlock(c_in))
                ups += 1
        layers += [GroupNorm(c_in, g), nn.Conv2d(c_in, p['image_channels'], 3, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, z):
        return self.model(z)  # [B, D, h, w] -> [B, 3, h*f, w*f]


class Codebook(nn.Module):
    """Nearest-code quantiser with a straight-through gradient.

    Keeps the course's only key, `embedding.weight`. Options that add no state_dict keys:
    `l2_codes` looks codes up by cosine similarity (z and codes l2-normalised), which spreads usage;
    `restart_every` > 0 re-initialises, every that many training calls, the codes picked fewer than
    `restart_threshold` times in the window from recent encoder outputs (non-persistent buffers).
    """

    def __init__(self, p):
        super().__init__()
        self.num_codebook_vectors, self.latent_dim = p['num_codebook_vectors'], p['latent_dim']
        self.beta = p['beta']
        self.l2_codes = bool(p.get('l2_codes', False))
        self.restart_every = int(p.get('restart_every', 0))
        self.restart_threshold = float(p.get('restart_threshold', 1))
        self.embedding = nn.Embedding(self.num_codebook_vectors, self.latent_dim)
        k = self.num_codebook_vectors
        self.embedding.weight.data.uniform_(-1.0 / k, 1.0 / k)
        self.register_buffer('usage', torch.zeros(k), persistent=False)  # picks in the current window
        self.register_buffer('recent', torch.zeros(0, self.latent_dim), persistent=False)  # recent z rows
        self.calls = 0

    def codes(self):
        w = self.embedding.weight
        return F.normalize(w, dim=1) if self.l2_codes else w

    def lookup(self, indices):
        """indices [...] -> code vectors [..., D] (normalised when l2_codes)."""
        return F.embedding(indices, self.codes())

    def project(self, z_flat):
        """Encoder rows [N, D] -> the space codes are looked up in (l2-normalised when l2_codes)."""
        return F.normalize(z_flat, dim=1) if self.l2_codes else z_flat

    def distances(self, z_flat):
        """Squared distances [N, K] of projected rows z_flat [N, D] to every code."""
        e = self.codes()
        return z_flat.pow(2).sum(1, keepdim=True) - 2 * z_flat @ e.t() + e.pow(2).sum(1)[None]

    def forward(self, z):
        if self.training and self.restart_every > 0 and self.calls and self.calls % self.restart_every == 0:
            self.restart_dead_codes()  # here, not after the lookup: the codes must not change before backward
        with torch.autocast(z.device.type, enabled=False):  # distances in fp32 (or fp64) even under AMP
            z = z.to(torch.promote_types(z.dtype, torch.float32))
            b, d, h, w = z.shape
            z_flat = self.project(z.permute(0, 2, 3, 1).reshape(-1, d))  # [B*h*w, D]
            e = self.codes()
            indices = self.distances(z_flat).argmin(1)  # [B*h*w]
            z_q = e[indices]  # [B*h*w, D]
            # codebook term pulls codes to encodings, beta-weighted commitment pulls encodings to codes
            q_loss = F.mse_loss(z_q, z_flat.detach()) + self.beta * F.mse_loss(z_flat, z_q.detach())
            z_q = z_flat + (z_q - z_flat).detach()  # straight-through
            z_q = z_q.reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous()  # [B, D, h, w]
            if self.training and self.restart_every > 0:
                self._track(z_flat.detach(), indices)
        return z_q, indices, q_loss

    @torch.no_grad()
    def _track(self, z_flat, indices):
        self.usage += torch.bincount(indices, minlength=self.num_codebook_vectors).float()
        keep = max(4 * self.num_codebook_vectors, z_flat.shape[0])
        self.recent = torch.cat([z_flat, self.recent])[:keep]
        self.calls += 1

    @torch.no_grad()
    def restart_dead_codes(self):
        """Re-initialise codes picked < restart_threshold times since the last restart; returns how many."""
        dead = (self.usage < self.restart_threshold).nonzero().squeeze(1)
        n = dead.numel()
        if n and self.recent.shape[0]:
            src = self.recent[torch.randint(self.recent.shape[0], (n,), device=self.recent.device)]
            noise = 0.01 * src.std() * torch.randn_like(src)
            self.embedding.weight[dead] = (src + noise).to(self.embedding.weight.dtype)
        self.usage.zero_()
        return n


class VQGAN(nn.Module):
    def __init__(self, model_param):
        super().__init__()
        p = model_param
        self.num_codebook_vectors = p['num_codebook_vectors']
        self.latent_resolution = p['latent_resolution']
        self.img_resolution = p['img_resolution']
        self.factor = 2 ** _num_scales(p)  # pixels per token side, checked a power of two
        self.latent_dim = p['latent_dim']
        self.encoder = Encoder(p)
        self.decoder = Decoder(p)
        self.codebook = Codebook(p)
        self.quant_conv = nn.Conv2d(p['latent_dim'], p['latent_dim'], 1)
        self.post_quant_conv = nn.Conv2d(p['latent_dim'], p['latent_dim'], 1)

    def encode(self, x):
        """x [B, 3, H, W] -> (z_q [B, D, h, w], indices [B*h*w], q_loss)."""
        return self.codebook(self.quant_conv(self.encoder(x)))

    def decode(self, z_q):
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x):
        z_q, indices, q_loss = self.encode(x)
        return self.decode(z_q), indices, q_loss

    @torch.no_grad()
    def encode_indices(self, x):
        """x [B, 3, H, W] -> tokens [B, h*w] long (row-major)."""
        return self.encode(x)[1].view(x.shape[0], -1)

    @torch.no_grad()
    def decode_indices(self, idx):
        """tokens [B, h*w] long -> images [B, 3, H, W]."""
        r = self.latent_resolution
        z_q = self.codebook.lookup(idx).view(idx.shape[0], r, r, -1).permute(0, 3, 1, 2)  # [B, D, r, r]
        return self.decode(z_q.contiguous())

    def last_layer_weight(self):
        """Weight of the decoder's output conv: where the adaptive GAN weight compares gradient norms."""
        return self.decoder.model[-1].weight


def model_state_dict(ckpt):
    """The VQGAN state_dict of a loaded checkpoint: a plain one (course VQGAN.pt) or a training dict."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get('model'), dict):
        return ckpt['model']
    return ckpt


def load_vqgan(config_path, ckpt_path=None, device='cpu', cfg=None):
    """VQGAN from a config and checkpoint (default: the config's `checkpoint: path`), eval, frozen, its conv
    weights channels-last (oneDNN's and cuDNN's fast layout: 1.3x faster encode and decode on the reference CPU
    in fp32; the same math in another summation order).

    cfg: the config at config_path when the caller has parsed it already (a run parses it once).
    """
    cfg = load_config(config_path) if cfg is None else cfg
    if 'model_param' not in cfg:
        raise ValueError(f"config {config_path} has no 'model_param' section")
    if ckpt_path is None:
        ckpt_path = (cfg.get('checkpoint') or {}).get('path')
        if not ckpt_path:
            raise ValueError(f"config {config_path} has no 'checkpoint: path:' and no checkpoint was given")
    model = VQGAN(cfg['model_param'])
    load_state_dict_checked(model, model_state_dict(load_checkpoint(ckpt_path)), ckpt_path)
    model.to(device, memory_format=torch.channels_last).eval()
    model.requires_grad_(False)
    return model
