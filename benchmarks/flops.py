"""The peak TFLOP/s a model FLOPs utilisation is measured against: a GPU's datasheet, or a matmul timed now."""
import time

import torch

# dense TFLOP/s (16-bit, fp32 without TF32) from the SXM datasheets; the H200 has the H100's compute
DATASHEET_TFLOPS = {'H100': (989.0, 67.0), 'H200': (989.0, 67.0)}


def peak_tflops(device, dtype, given=None, size=4096):
    """(TFLOP/s, where the figure comes from): the denominator of model FLOPs utilisation.

    `given` wins; then the datasheet for a GPU in DATASHEET_TFLOPS (PCIe cards excepted); otherwise
    (a CPU has no datasheet figure to quote) a size x size matmul in `dtype`, measured now.
    """
    if given:
        return given, 'given'
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        for gpu, (half, single) in DATASHEET_TFLOPS.items():
            if gpu in name and 'PCIe' not in name:
                return (half if dtype in (torch.bfloat16, torch.float16) else single), f'{gpu} datasheet'
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(3):
        a @ b
    sync()
    return 3 * 2 * size ** 3 / (time.perf_counter() - t) / 1e12, f'measured {str(dtype)[6:]} {size}^3 matmul'
