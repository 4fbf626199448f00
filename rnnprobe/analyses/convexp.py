"""``rnnprobe convexp``: the convolutional exponential, sine or cosine of a model's recurrent kernel.

Magnasco (2023): for a convolution on a lattice with circular boundaries the
matrix exponential of the operator is the operator of the kernel
``G = F^-1[exp(F[K])]`` (eq. 1.2), and likewise for sine and cosine (eq. 1.3),
at ``O(N log N)`` instead of ``O(N^3)`` (:mod:`rnnprobe.numerics.conv`). This
command applies ``exp``, ``sin`` or ``cos`` to ``t K`` for the model's
recurrent kernel (``--of kernel``) or for its generator when W_hh was built
as ``exp_conv(G)`` (``--of generator``; the default when there is one, so that
``convexp`` with ``--t 1`` reproduces W_hh), reports the kernel it gives, its
unitarity error ``max | |FFT(G)| - 1 |`` and spectral radius, the input's
antisymmetry (anti-Hermitian) error, and, on lattices up to ``--check-max``
units (``--dense-check``), checks the result against ``scipy.linalg.expm`` /
``sinm`` / ``cosm`` of the dense matrix.

The exponential of the discrete Laplacian (kernel -4 at the origin, 1 at the
four neighbours) is the lattice heat kernel, a Gaussian of width sqrt(2t) per
axis (the paper's figure FF): ``rnnprobe convexp lap.npz --t 100``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from rnnprobe.analyses.base import AnalysisSpec, Options, Result, RunContext, option
from rnnprobe.errors import InputError
from rnnprobe.model import Model
from rnnprobe.numerics import conv as nconv
from rnnprobe.operators import CircularConvOperator

__all__ = ["ConvexpOptions", "ConvexpResult", "run", "ANALYSIS", "dense_reference"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvexpOptions(Options):
    function: str = option("exp", choices=nconv.FUNCTIONS, help="exp, sin or cos of t K (computed by FFT).")
    t: float = option(1.0, help="The factor t in f(t K) (the time of the flow for exp).")
    of: str = option("auto", choices=("auto", "kernel", "generator"),
                     help="Which kernel K: W_hh's kernel, or the generator G of W_hh = exp_conv(G); auto: the "
                          "generator when the model has one, else the kernel.")
    dense_check: str = option("auto", choices=("auto", "yes", "no"),
                              help="Compare with scipy.linalg.expm/sinm/cosm of the dense matrix: auto does so up "
                                   "to --check-max units.")
    check_max: int = option(1024, min=1, metavar="N", help="Largest number of units the auto check runs on.")
    max_error: float | None = option(None, min=0.0, min_open=True,
                                     help="Gate: exit 1 when the dense check's relative error exceeds this.")

    def check(self) -> None:
        if not np.isfinite(self.t):
            raise InputError(f"--t {self.t} must be a finite number")


@dataclasses.dataclass
class ConvexpResult(Result):
    """``f_conv(t K)`` of a recurrent kernel (HDF5 group ``/convexp``)."""

    analysis = "convexp"
    kernel_in: np.ndarray
    kernel_out: np.ndarray
    output_modulus: np.ndarray
    function: str
    t: float
    of: str
    lattice: str
    channels: int
    n_units: int
    imag_residual: float
    input_antisymmetry_error: float
    input_symmetry_error: float
    output_unitarity_error: float
    output_spectral_radius: float
    fft_seconds: float
    dense_checked: bool
    dense_error: float | None = None
    dense_seconds: float | None = None
    reproduces_w_hh: float | None = None

    def summary(self) -> dict:
        return {k: getattr(self, k) for k in (
            "function", "t", "of", "lattice", "channels", "n_units", "imag_residual", "input_antisymmetry_error",
            "input_symmetry_error", "output_unitarity_error", "output_spectral_radius", "fft_seconds",
            "dense_checked", "dense_error", "dense_seconds", "reproduces_w_hh")}


def dense_reference(K: torch.Tensor, lattice, fn: str, t: float) -> np.ndarray:
    """``scipy.linalg.expm`` / ``sinm`` / ``cosm`` of ``t`` times the dense matrix of the kernel ``K``."""
    import scipy.linalg

    W = CircularConvOperator(K, lattice).dense().cpu().numpy()
    return {"exp": scipy.linalg.expm, "sin": scipy.linalg.sinm, "cos": scipy.linalg.cosm}[fn](t * W)


def run(model: Model, options: ConvexpOptions, ctx: RunContext) -> ConvexpResult:
    op = model.cell.recurrent_operator()
    if not isinstance(op, CircularConvOperator):
        raise InputError(f"convexp needs W_hh to be a circular convolution on a lattice; this model's W_hh is "
                         f"{op.describe()} (give a lattice kernel: --lattice with a Conv state dict, or a "
                         "kernel_hh / generator_hh file)")
    op = op.to(dtype=torch.float64, device=ctx.device)
    of = options.of
    if of == "auto":
        of = "generator" if op.generator is not None else "kernel"
    if of == "generator" and op.generator is None:
        raise InputError("--of generator: this W_hh was not built as exp_conv(G) (no generator in the file); "
                         "use --of kernel")
    K = op.generator if of == "generator" else op.kernel
    t0 = time.perf_counter()
    G, residual = nconv.conv_function(K, options.function, options.t)
    fft_seconds = time.perf_counter() - t0
    out_op = CircularConvOperator(G, op.lattice)
    result = ConvexpResult(
        kernel_in=K.cpu().numpy(), kernel_out=G.cpu().numpy(),
        output_modulus=(out_op.blocks().abs().reshape(op.lattice) if op.channels == 1
                        else torch.linalg.svdvals(out_op.blocks())[:, 0].reshape(op.lattice)).cpu().numpy(),
        function=options.function, t=float(options.t), of=of, lattice=op.attrs()["lattice"], channels=op.channels,
        n_units=op.n, imag_residual=residual, input_antisymmetry_error=nconv.antisymmetry_error(K),
        input_symmetry_error=nconv.symmetry_error(K), output_unitarity_error=nconv.unitarity_error(G),
        output_spectral_radius=float(out_op.eigenvalues().abs().max()), fft_seconds=fft_seconds,
        dense_checked=False,
    )
    if of == "generator" and options.function == "exp" and options.t == 1.0:
        result.reproduces_w_hh = float((G - op.kernel).abs().max())
    want = options.dense_check == "yes" or (options.dense_check == "auto" and op.n <= options.check_max)
    if want:
        ctx.progress.start(f"convexp: dense {options.function}m of {op.n} x {op.n}", None)
        try:
            t1 = time.perf_counter()
            ref = dense_reference(K.cpu(), op.lattice, options.function, options.t)
            result.dense_seconds = time.perf_counter() - t1
        finally:
            ctx.progress.stop()
        mine = out_op.dense(limit=max(op.n, 1)).cpu().numpy()
        scale = float(np.abs(ref).max()) or 1.0
        result.dense_error = float(np.abs(mine - ref).max()) / scale
        result.dense_checked = True
    elif options.dense_check == "auto":
        ctx.warn(f"no dense check: {op.n} units exceed --check-max {options.check_max}")
    return result


def gate(result: ConvexpResult, options: ConvexpOptions) -> list[str]:
    if options.max_error is None:
        return []
    if not result.dense_checked:
        return [f"--max-error {options.max_error:g}: no dense check was run (raise --check-max or pass "
                "--dense-check yes)"]
    if not result.dense_error <= options.max_error:
        return [f"dense_error {result.dense_error:.3g} > --max-error {options.max_error:g}"]
    return []



ANALYSIS = AnalysisSpec(
    name="convexp",
    help="Convolutional exponential / sine / cosine of a recurrent kernel by FFT, checked against expm.",
    description=(
        "For a circular convolution W_hh on a lattice: the kernel of f(t K) for f = exp, sin or cos, computed "
        "frequency by frequency by FFT (Magnasco 2023, eqs. 1.2-1.3; O(N log N)), of W_hh's kernel or of its "
        "generator G when W_hh = exp_conv(G); the output's unitarity error max | |FFT| - 1 | and spectral radius, "
        "the input's antisymmetry error, and on small lattices the error against scipy.linalg.expm / sinm / cosm "
        "of the dense matrix."
    ),
    options=ConvexpOptions,
    run=run,
    example="rnnprobe convexp sample_checkpoints/conv_orth.npz --function exp --t 1",
    plot="rnnprobe.plots.convexp:plot",
    gate=gate,
    uses_task=False,
)
