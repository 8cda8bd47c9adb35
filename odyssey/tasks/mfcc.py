"""MFCC features of speech, as in the paper's TIMIT setup: 12 MFCCs + log energy, deltas, delta-deltas.

For samples x[n] (int16 PCM, scaled to [-1, 1)) at rate r:

1. pre-emphasis: x'[n] = x[n] - 0.97 x[n - 1];
2. frames of ``win = 0.025 r`` samples (25 ms) every ``hop = 0.010 r`` (10 ms), no padding:
   frame t covers samples [t hop, t hop + win), its centre is sample ``t hop + win // 2``, and
   there are ``1 + (N - win) // hop`` frames (0 when N < win);
3. a symmetric Hamming window w[k] = 0.54 - 0.46 cos(2 pi k / (win - 1)) on each frame;
4. log energy e_t = ln(max(sum_k (w[k] x'_t[k])^2, 1e-10));
5. power spectrum |FFT_512|^2, 26 HTK mel filters (peak 1) over 0..r/2 (librosa), natural log (floor
   1e-10), DCT-II (orthonormal, librosa's ``mfcc``); coefficients 1..12 (c0 is dropped: e_t
   stands for the level);
6. deltas d_t = sum_{n=1..2} n (c_{t+n} - c_{t-n}) / (2 sum n^2), edges repeated (HTK's
   regression, librosa's ``delta`` with width 5), and delta-deltas as the deltas of the deltas.

Result: (T, 39) float32, columns ``[c1..c12, e, d(c1..c12), d(e), dd(c1..c12), dd(e)]``. The
normalisation (train-set mean and std per column) is the task's, not done here.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["MFCCSettings", "frame_centres", "mfcc_features", "num_frames"]


@dataclass(frozen=True)
class MFCCSettings:
    """The feature settings (part of the feature cache's key)."""

    window_s: float = 0.025
    hop_s: float = 0.010
    preemphasis: float = 0.97
    n_fft: int = 512
    n_mels: int = 26
    n_mfcc: int = 12  # c1..c12; the log energy is added as the 13th static coefficient
    delta_width: int = 5  # frames in the delta regression (+-2)

    @property
    def size(self) -> int:
        return 3 * (self.n_mfcc + 1)

    def window(self, rate: int) -> int:
        return int(round(self.window_s * rate))

    def hop(self, rate: int) -> int:
        return int(round(self.hop_s * rate))

    def as_key(self) -> dict:
        return {"mfcc_version": 1, **asdict(self)}


def num_frames(num_samples: int, rate: int, settings: MFCCSettings = MFCCSettings()) -> int:
    win, hop = settings.window(rate), settings.hop(rate)
    return 0 if num_samples < win else 1 + (num_samples - win) // hop


def frame_centres(num_samples: int, rate: int, settings: MFCCSettings = MFCCSettings()) -> np.ndarray:
    """(T,) the sample at the centre of each frame: ``t hop + win // 2``."""
    win, hop = settings.window(rate), settings.hop(rate)
    return np.arange(num_frames(num_samples, rate, settings), dtype=np.int64) * hop + win // 2


@functools.lru_cache(maxsize=8)
def _mel_filters(rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    import librosa

    # HTK's filters: the HTK mel scale, triangles of peak 1 (no area normalisation)
    return librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=rate / 2, htk=True, norm=None)


def mfcc_features(samples: np.ndarray, rate: int, settings: MFCCSettings = MFCCSettings()) -> np.ndarray:
    """(T, 39) features of int16 (or float in [-1, 1]) samples (N,); see the module docstring."""
    import librosa

    x = np.asarray(samples, dtype=np.float64)
    if np.issubdtype(np.asarray(samples).dtype, np.integer):
        x = x / 32768.0
    win, hop = settings.window(rate), settings.hop(rate)
    n = num_frames(len(x), rate, settings)
    if n == 0:
        return np.zeros((0, settings.size), dtype=np.float32)
    emphasised = np.concatenate([x[:1], x[1:] - settings.preemphasis * x[:-1]])
    frames = np.lib.stride_tricks.sliding_window_view(emphasised, win)[::hop][:n]  # (T, win)
    windowed = frames * np.hamming(win)  # symmetric Hamming
    log_energy = np.log(np.maximum((windowed**2).sum(axis=1), 1e-10))  # (T,)
    power = np.abs(np.fft.rfft(windowed, n=settings.n_fft, axis=1)) ** 2  # (T, n_fft/2 + 1)
    mel = _mel_filters(rate, settings.n_fft, settings.n_mels)  # (n_mels, n_fft/2 + 1)
    log_mel = np.log(np.maximum(power @ mel.T, 1e-10))  # (T, n_mels)
    ceps = librosa.feature.mfcc(S=log_mel.T, n_mfcc=settings.n_mfcc + 1, dct_type=2, norm="ortho")[1:]  # (12, T)
    static = np.vstack([ceps, log_energy[None]])  # (13, T)
    deltas = librosa.feature.delta(static, width=settings.delta_width, order=1, mode="nearest")
    deltas2 = librosa.feature.delta(deltas, width=settings.delta_width, order=1, mode="nearest")
    return np.vstack([static, deltas, deltas2]).T.astype(np.float32)  # (T, 39)
