"""Speckle: a periodic field of complex scatterer echoes fixed in the patient frame.

Fully developed speckle is the sum of many random scatterer echoes inside the point-spread
function: a circular complex Gaussian signal whose envelope is Rayleigh distributed. We draw
white complex Gaussian scatterers on a periodic lattice, filter them with a Gaussian PSF in
Fourier space (circularly, so the tile repeats seamlessly) and rescale to unit variance per
component. The renderer looks the field up at each sample's patient-frame position, so the
texture is glued to the anatomy (a probe moved by 0.5 mm sees it shift by 0.5 mm), and memory
is one tile, independent of the number of environments and patients.
"""

from __future__ import annotations

import torch


def speckle_tile(size: int, sigma_cells: float, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(size**3, 2) float32: in-phase and quadrature speckle, unit variance each, periodic.

    size: lattice cells per axis. sigma_cells: PSF standard deviation in cells.
    """
    g = torch.Generator().manual_seed(seed)
    white = torch.randn(2, size, size, size, generator=g, dtype=torch.float64)
    k = torch.fft.fftfreq(size, dtype=torch.float64)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    # Fourier transform of a unit-mass Gaussian of std sigma (cells).
    psf_hat = torch.exp(-2 * (torch.pi * sigma_cells) ** 2 * k2)
    field = torch.fft.ifftn(torch.fft.fftn(white, dim=(1, 2, 3)) * psf_hat, dim=(1, 2, 3)).real
    field = field / field.std(dim=(1, 2, 3), keepdim=True)
    return field.reshape(2, -1).T.contiguous().to(device=device, dtype=torch.float32)
