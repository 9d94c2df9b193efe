"""Max pooling calibrated for response length (pooling "calmax"): a short span at full strength,
without the extra chances a long response gets.

Mean pooling dilutes a trait that lives in a few tokens (a flattering opener) over the whole
answer; max pooling keeps it, but a response of more tokens has more chances at a high maximum, so
max-pooled concepts rise with length (on the dev organisms, benchmarks/short_span.py). calmax
reports the maximum as its chance level at the response's own length:

    F_f(x) = share of the audit's response tokens t with a_f(t) ≤ x        (the reference: every audited token)
    u_f(y) = P(the max of n(y) tokens drawn from F_f ≤ max_t a_f(t))
           = F_f(x)^n            for x = max_t a_f(t) > 0
           = ½·F_f(0)^n          for x = 0 (the latent never fires in y: mid-p, half the atom at 0)

If y's tokens were drawn like the audit's tokens, u would be uniform on [0, 1] whatever n; a
strong token lifts u towards 1 at any length, and a long response whose maximum is only ordinary
gets a lower u than a short one with the same maximum. Responses are not all drawn alike (one
fires a latent often, another never), and the maximum of a mixture grows more slowly than F^n
says (Jensen), so u leans against long responses where responses differ much: the concepts' mean
rank-biserial with "long" is −0.04 on the moved dev organism (max: +0.20, mean: +0.03) but −0.35
on the HH dev organism (max: +0.72, mean: +0.34); benchmarks/short_span.py has the table.

F_f is kept as a table (`MaxCalibration`): the share of tokens where f is off, and f's nonzero
token values at LEVELS (dense towards the top, where F^n is decided), interpolated linearly. The
audit and every later scoring of new responses (`audit.scorer`) read the same table, so a
response gets the same u wherever it is scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

# quantile levels of a latent's nonzero token values: 0, then 1 − 10^(−4·j/32), j = 1..32, then 1
LEVELS = np.r_[0.0, 1.0 - np.geomspace(1.0, 1e-4, 33)[1:], 1.0]                 # [Q] = [34]


@dataclass
class MaxCalibration:
    """The reference per-token distribution F_f of selected latents (module docstring)."""

    features: np.ndarray    # [M] SAE latent ids
    zero: np.ndarray        # [M] F_f(0): share of reference tokens where latent f is off
    values: np.ndarray      # [M, Q] f's nonzero token values at LEVELS (non-decreasing per row)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """F_f(x) of x [S, M] (column j is latent features[j]) → [S, M]; F_f(0) at x = 0."""
        x = np.asarray(x, dtype=np.float64)
        out = np.empty_like(x)
        for j in range(len(self.features)):
            g = np.interp(x[:, j], self.values[j], LEVELS, left=0.0, right=1.0)     # share of nonzero values ≤ x
            out[:, j] = self.zero[j] + (1.0 - self.zero[j]) * np.where(x[:, j] > 0, g, 0.0)
        return out

    def transform(self, mx: np.ndarray, n_tokens: np.ndarray) -> np.ndarray:
        """u [S, M] of per-response maxima mx [S, M] over n_tokens [S] tokens (module docstring)."""
        n = np.maximum(np.asarray(n_tokens, dtype=np.float64), 1.0)[:, None]     # [S, 1]
        mx = np.asarray(mx, dtype=np.float64)
        F = self.cdf(mx)
        return np.where(mx > 0, F ** n, 0.5 * F ** n)

    def pooled(self, mx: sp.spmatrix, n_tokens: np.ndarray) -> sp.csr_matrix:
        """The calmax matrix [S, F] from max-pooled latents mx [S, F]: u in the calibrated
        latents' columns, nothing elsewhere (the other latents are not scored)."""
        S, F = mx.shape
        u = self.transform(sp.csc_matrix(mx)[:, self.features].toarray(), n_tokens)   # [S, M]
        rows = np.repeat(np.arange(S), len(self.features))
        return sp.csr_matrix((u.ravel(), (rows, np.tile(self.features, S))), shape=(S, F))

    def to_dict(self) -> dict:
        return {"features": self.features.tolist(), "zero": self.zero.tolist(), "values": self.values.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> MaxCalibration:
        values = np.asarray(d["values"], dtype=np.float64).reshape(len(d["features"]), len(LEVELS))
        return cls(np.asarray(d["features"], dtype=np.int64), np.asarray(d["zero"], dtype=np.float64), values)


def fit_max_calibration(feat: np.ndarray, val: np.ndarray, n_tokens: int, features: np.ndarray) -> MaxCalibration:
    """F_f of each latent in `features` [M] from the nonzero entries (feat [nnz], val [nnz]) of a
    latent store holding n_tokens response tokens in all (a token where f is not stored is a 0)."""
    features = np.asarray(features, dtype=np.int64)
    col = np.full(int(max(features.max(initial=-1), feat.max(initial=-1))) + 1, -1)
    col[features] = np.arange(len(features))
    j = col[feat]
    keep = j >= 0
    j, v = j[keep], np.asarray(val, dtype=np.float64)[keep]
    order = np.lexsort((v, j))
    j, v = j[order], v[order]
    start = np.searchsorted(j, np.arange(len(features) + 1))
    nnz = np.diff(start)                                                         # [M] tokens where f fires
    values = np.zeros((len(features), len(LEVELS)))
    for m in np.flatnonzero(nnz):
        values[m] = np.quantile(v[start[m]:start[m + 1]], LEVELS)
    return MaxCalibration(features, 1.0 - nnz / max(int(n_tokens), 1), values)
