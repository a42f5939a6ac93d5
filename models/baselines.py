"""Non-learned hole fills a user would pick instead of the model: OpenCV Telea / Navier-Stokes, mean colour; and the
tokenizer's own reconstruction, the ceiling of any fill or generation over its tokens.

Images [B, 3, H, W] in [0, 1], masks [B, 1, H, W] with 1 = keep. OpenCV (opencv-python-headless) is a
dev/benchmark dependency: `have_opencv()` says whether it is installed.
"""
import numpy as np
import torch

from dataset import denormalize, normalize


def have_opencv():
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def opencv_fill(images, masks, method='telea', radius=3):
    """cv2.inpaint of each image (uint8, as a user would call it) over its holes; method 'telea' or 'navier_stokes'."""
    import cv2
    flag = {'telea': cv2.INPAINT_TELEA, 'navier_stokes': cv2.INPAINT_NS}[method]
    out = []
    for img, m in zip(images, masks):
        rgb = (img.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        hole = (m[0].cpu().numpy() < 0.5).astype(np.uint8) * 255
        out.append(torch.from_numpy(cv2.inpaint(rgb, hole, radius, flag)).permute(2, 0, 1).float() / 255)
    return torch.stack(out).to(images.device)


def mean_fill(images, masks):
    """Holes filled with the mean colour of each image's known pixels."""
    fill = (images * masks).sum((2, 3), keepdim=True) / masks.sum((2, 3), keepdim=True).clamp(min=1)
    return masks * images + (1 - masks) * fill


def tokenizer_recon(vqgan, images, mean, std):
    """images through the tokenizer (encoded to tokens, decoded), in [0, 1]; mean, std: the model's normalisation."""
    return denormalize(vqgan.decode_indices(vqgan.encode_indices(normalize(images, mean, std))), mean, std)
