"""Colored (power-law) Gaussian noise sequences.

A sequence with power spectral density ``S(f) ~ f^(-beta)``: beta 0 is white, 1 pink, 2 red
(Brownian). Generated in the frequency domain (Timmer & Koenig 1995, as in the ``colorednoise``
package used by "Colored Noise in PPO", Hollenstein et al., AAAI 2024): random complex Gaussian
amplitudes scaled by ``f^(-beta/2)``, inverse real FFT, normalised to unit variance in
expectation. Frequencies below ``1/T`` are cut off (the lowest bin takes the ``1/T`` amplitude).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import jax

from dynsparse import errors

BETA_RANGE = (0.0, 2.0)


def check_beta(beta: float) -> float:
    """Return ``beta`` as float or raise ``UserError`` if it is not in ``BETA_RANGE``."""
    b = float(beta)
    if not (BETA_RANGE[0] <= b <= BETA_RANGE[1]):
        raise errors.UserError(
            f"noise exponent beta {beta!r} is out of range; allowed: {BETA_RANGE[0]} <= beta <= "
            f"{BETA_RANGE[1]} (0 white, 1 pink, 2 red)"
        )
    return b


def colored_noise(beta: float, n_steps: int, n_dims: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance colored Gaussian noise.

    Args:
      beta: spectral exponent in ``[0, 2]``.
      n_steps: sequence length ``T`` (steps).
      n_dims: independent sequences (e.g. action dimensions).
      rng: NumPy generator (the only source of randomness).

    Returns:
      ``(n_steps, n_dims)`` float64 array; each column has mean 0 and variance 1 in expectation.
    """
    beta = check_beta(beta)
    if n_steps < 1:
        raise errors.UserError(f"noise length {n_steps} must be >= 1")
    if n_steps == 1 or beta == 0.0:
        return rng.standard_normal((n_steps, n_dims))
    f = np.fft.rfftfreq(n_steps)
    f[0] = f[1]  # cut-off at 1/T
    scale = f ** (-beta / 2.0)
    re = rng.standard_normal((n_dims, f.size)) * scale
    im = rng.standard_normal((n_dims, f.size)) * scale
    # The DC bin (and the Nyquist bin for even T) must be real; rescale to keep their power.
    im[:, 0] = 0.0
    re[:, 0] *= np.sqrt(2.0)
    if n_steps % 2 == 0:
        im[:, -1] = 0.0
        re[:, -1] *= np.sqrt(2.0)
    # Expected variance of the irfft output (1/N normalisation): each complex bin k contributes
    # 4 s_k^2, the real DC bin 2 s_0^2 and, for even T, the real Nyquist bin 2 s_{T/2}^2.
    coef = np.full(f.size, 4.0)
    coef[0] = 2.0
    if n_steps % 2 == 0:
        coef[-1] = 2.0
    sigma = np.sqrt(np.sum(coef * scale**2)) / n_steps
    y = np.fft.irfft(re + 1j * im, n=n_steps, axis=-1) / sigma
    return np.ascontiguousarray(y.T)


def colored_noise_jax(key: jax.Array, beta: float, n_steps: int, n_dims: int) -> jax.Array:
    """``colored_noise`` in JAX (jittable, float32 under default JAX): same spectrum and scaling.

    Used inside PPO training, where the exploration noise of thousands of environments is drawn
    on the accelerator at every reset.

    Args:
      key: JAX PRNG key.
      beta: spectral exponent in ``[0, 2]`` (a Python float: it fixes the traced computation).
      n_steps: sequence length ``T`` (steps).
      n_dims: independent sequences.

    Returns:
      ``(n_steps, n_dims)`` array; each column has mean 0 and variance 1 in expectation.
    """
    import jax
    import jax.numpy as jnp

    beta = check_beta(beta)
    if n_steps == 1 or beta == 0.0:
        return jax.random.normal(key, (n_steps, n_dims))
    f = np.fft.rfftfreq(n_steps)
    f[0] = f[1]
    scale = f ** (-beta / 2.0)
    coef = np.full(f.size, 4.0)
    coef[0] = 2.0
    real_only = np.zeros(f.size, bool)
    real_only[0] = True
    if n_steps % 2 == 0:
        coef[-1] = 2.0
        real_only[-1] = True
    sigma = np.sqrt(np.sum(coef * scale**2)) / n_steps
    amp_re = np.where(real_only, np.sqrt(2.0), 1.0) * scale
    amp_im = np.where(real_only, 0.0, 1.0) * scale
    k_re, k_im = jax.random.split(key)
    re = jax.random.normal(k_re, (n_dims, f.size)) * jnp.asarray(amp_re, jnp.float32)
    im = jax.random.normal(k_im, (n_dims, f.size)) * jnp.asarray(amp_im, jnp.float32)
    y = jnp.fft.irfft(re + 1j * im, n=n_steps, axis=-1) / np.float32(sigma)
    return y.T
