"""Speckle: a periodic field of complex scatterer echoes fixed in the patient frame.

Fully developed speckle is the sum of many random scatterer echoes inside the point-spread
function: a circular complex Gaussian signal whose envelope is Rayleigh distributed. We draw
white complex Gaussian scatterers on a periodic lattice, optionally filtered with a Gaussian in
Fourier space (circularly, so the tile repeats seamlessly), rescaled to unit variance per
component; the renderer keeps them white by default, so that its point-spread functions alone
set the grain and its power normalisation is exact. In tissue whose scatterers are sparse
(`TissueProperties.scatterer_density`) only the strongest cells scatter (`sparse_scatterers`).
The renderer looks the field up at each sample's patient-frame position, so the texture is glued
to the anatomy (a probe moved by 0.5 mm sees it shift by 0.5 mm), and memory is one tile,
independent of the number of environments and patients.
"""

from __future__ import annotations

import torch


def speckle_tile(size: int, sigma_cells: float, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(size**3, 2) float32: in-phase and quadrature speckle, unit variance each, periodic.

    size: lattice cells per axis. sigma_cells: the filter's standard deviation in cells (0: white).
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


def sparse_scatterers(speckle_i: torch.Tensor, speckle_q: torch.Tensor, density: torch.Tensor) -> torch.Tensor:
    """The amplitude factor (same shape) that leaves a fraction `density` (0, 1] of white speckle
    cells scattering, at the same mean power: the cells whose |s|^2 = I^2 + Q^2 exceeds its
    (1 - density) quantile -2 ln(density) (|s|^2 of unit complex Gaussian speckle is exponential
    with mean 2, so exp(-|s|^2 / 2) is uniform: the field is its own draw, with no lookup of its
    own), scaled by 1 / sqrt(density (1 - ln density)), since E[|s|^2; |s|^2 > t] = (t + 2) e^(-t/2).
    Density 1 keeps every cell at factor 1."""
    power = speckle_i * speckle_i + speckle_q * speckle_q
    log_density = torch.log(density.clamp_min(1e-6))
    scale = torch.rsqrt(density.clamp_min(1e-6) * (1.0 - log_density))
    return torch.where(power >= -2.0 * log_density, scale, 0.0)
