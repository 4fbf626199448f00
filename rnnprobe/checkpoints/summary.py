"""``model_summary``: the JSON that ``rnnprobe inspect`` prints, and the spectral radius behind it.

The spectral radius of W_hh is exact (all eigenvalues, LAPACK) up to
``EXACT_MAX`` hidden units. Above, a full eigendecomposition costs tens of
seconds (O(N^3) with a large constant), so the largest-magnitude eigenvalues
are found with ARPACK (implicitly restarted Arnoldi, ``scipy.sparse.linalg.eigs``)
to a relative residual of ``ARPACK_TOL``, with matrix-vector products in float32
(half the memory traffic; the products' rounding, ~1e-7, is below the
tolerance). Arnoldi converges slowly when many eigenvalues share the largest
modulus (e.g. an orthogonal W_hh); if it has not converged after
``ARPACK_MAXITER`` restarts, the exact method is used after all. A circular
convolution's spectral radius is exact from the FFT of its kernel at any size.
The summary says which method produced the number (``spectral_radius_method``).
"""

from __future__ import annotations

import numpy as np
import torch

from rnnprobe.cells import NoRecurrentMatrix
from rnnprobe.errors import InputError
from rnnprobe.model import Model
from rnnprobe.operators import DenseTooLarge

__all__ = ["model_summary", "spectral_radius", "EXACT_MAX", "ARPACK_TOL"]

EXACT_MAX = 1024
ARPACK_TOL = 1e-6
ARPACK_K = 6
ARPACK_NCV = 96
ARPACK_MAXITER = 20


def _exact(W: np.ndarray) -> float:
    import scipy.linalg

    return float(np.abs(scipy.linalg.eigvals(W, check_finite=False)).max())


def spectral_radius(W: torch.Tensor) -> tuple[float, str]:
    """max |lambda_i(W)| of a square matrix and the method used (``eigvals`` or ``arpack``).

    Exact for N <= EXACT_MAX; ARPACK (relative residual ARPACK_TOL) above,
    falling back to the exact method when ARPACK does not converge.
    """
    A = W.detach().to(device="cpu", dtype=torch.float64).numpy()
    N = A.shape[0]
    if N == 0:
        return 0.0, "eigvals"
    if N <= EXACT_MAX:
        return _exact(A), "eigvals"
    import scipy.sparse.linalg as sla

    A32 = A.astype(np.float32)
    op = sla.LinearOperator((N, N), dtype=np.float64,
                            matvec=lambda x: (A32 @ np.asarray(x, dtype=np.float32).ravel()).astype(np.float64))
    v0 = np.random.default_rng(0).standard_normal(N)
    try:
        vals = sla.eigs(op, k=ARPACK_K, ncv=ARPACK_NCV, which="LM", tol=ARPACK_TOL, maxiter=ARPACK_MAXITER, v0=v0,
                        return_eigenvectors=False)
        return float(np.abs(vals).max()), f"arpack (k={ARPACK_K}, tol={ARPACK_TOL:g}, float32 products)"
    except sla.ArpackNoConvergence:
        return _exact(A), "eigvals (arpack did not converge)"


def _radius(cell) -> tuple[float | None, str | None]:
    """W_hh's spectral radius: exact from the FFT for a circular convolution, else :func:`spectral_radius`."""
    try:
        op = cell.recurrent_operator()
    except NoRecurrentMatrix:
        return None, None
    except InputError:  # a user cell's matrices() that is not one square matrix
        return None, None
    if op.exact_spectrum:
        return float(op.eigenvalues().abs().max()), f"fft (exact: {op.describe_short()})"
    try:
        W_hh = op.dense()
    except DenseTooLarge:
        return None, "none (the dense form of W_hh is too large)"
    return spectral_radius(W_hh) if W_hh.dim() == 2 else (None, None)


def _json_value(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def model_summary(model: Model) -> dict:
    """What ``rnnprobe inspect`` reports about a loaded model, as plain JSON values.

    Keys: ``checkpoint``, ``format``, ``cell``, ``description``, ``n_hidden``,
    ``n_state``, ``n_inputs``, ``n_outputs``, ``form``, ``alpha``, ``nonlinearity``
    (``null`` for gated and user cells), ``dt``, ``tau`` (= dt / alpha, when dt is
    known), ``task``, ``trained_dtype``, ``spectral_radius`` of W_hh (``null``
    without a single W_hh) and ``spectral_radius_method``, ``keys`` (canonical
    name -> file key), ``shapes`` and ``norms`` (Frobenius) of the canonical
    arrays, ``ignored`` file keys, ``notes``, ``metadata``.
    """
    cell = model.cell
    attrs = cell.attrs()
    elman = attrs.get("cell") == "elman"
    rho, method = _radius(cell)
    arrays = cell.arrays()
    alpha = attrs.get("alpha") if elman else None
    form = attrs.get("form") if elman else None
    tau = model.dt / alpha if (model.dt is not None and alpha and form != "residual") else None
    return {
        "checkpoint": None if model.source is None else str(model.source),
        "format": model.format,
        "cell": attrs.get("cell", cell.kind),
        "description": cell.describe(),
        "n_hidden": int(cell.n_hidden),
        "n_state": int(cell.n_state),
        "n_inputs": int(cell.n_inputs),
        "n_outputs": int(cell.n_outputs),
        "form": form,
        "alpha": alpha,
        "nonlinearity": attrs.get("nonlinearity") if elman else None,
        "dt": model.dt,
        "tau": tau,
        "task": model.task,
        "trained_dtype": model.trained_dtype,
        "spectral_radius": rho,
        "spectral_radius_method": method,
        "keys": dict(model.keys),
        "shapes": {k: list(v.shape) for k, v in arrays.items()},
        "norms": {k: float(torch.linalg.vector_norm(v.detach().to(torch.float64)).item()) for k, v in arrays.items()},
        "ignored": list(model.ignored),
        "notes": list(model.notes),
        "metadata": _json_value(model.metadata),
    }
