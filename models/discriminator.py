"""PatchGAN discriminator (pix2pix / taming-transformers layout): one real/fake logit per image patch."""
import torch.nn as nn


class Discriminator(nn.Module):
    def __init__(self, params):
        super().__init__()
        c, nf, n_layers = params['image_channels'], params['num_filters_last'], params['n_layers']
        layers = [nn.Conv2d(c, nf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for i in range(1, n_layers + 1):
            mult_last, mult = mult, min(2 ** i, 8)
            layers += [nn.Conv2d(nf * mult_last, nf * mult, 4, 2 if i < n_layers else 1, 1, bias=False),
                       nn.BatchNorm2d(nf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(nf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        self.apply(_init)

    def forward(self, x):
        return self.model(x)  # [B, 3, H, W] -> [B, 1, h, w] patch logits


def _init(m):
    # DCGAN init, as in taming-transformers
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
