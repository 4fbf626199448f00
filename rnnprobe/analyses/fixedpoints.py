"""``rnnprobe fixedpoints``: fixed and slow points, their linearisation, and the memory basis.

The method users know is Sussillo & Barak (2013, "Opening the black box: low-
dimensional dynamics in high-dimensional recurrent neural networks"): find the
states where ``q(h) = 1/2 ||F(h, u*) - h||^2`` vanishes (fixed points) or is
small (slow points), starting from states visited by the network, and
linearise the map there. The solver is :func:`rnnprobe.numerics.fixedpoints.find_fixed_points`
(batched float64 Newton-Krylov / Levenberg-Marquardt, honest labels).

Per distinct point: ``J = dF/dh``, ``B = dF/du``, eigenvalues, stability
(stable, marginal, saddle with its number of unstable directions, unstable),
time constants ``tau = -1/log|lambda|`` (steps, and time units when ``dt`` is
known), continuous-time eigenvalues ``(lambda - 1)/alpha`` for leaky models,
and the memory basis of the variable-binding view of RNNs (``W_hh = Xi Phi Xi^+``,
columns of Xi the stored memories, Phi their interaction; linearised at a fixed
point, ``J = Xi Phi Xi^+``), with the input map ``Xi^+ B``, the readout map
``W_r Xi`` and a test for a cyclic shift of memory subspaces (repeat copy).

At lattice scale (a convolutional W_hh beyond the dense size limit, or any
state too large for explicit Jacobians; :func:`rnnprobe.numerics.fixedpoints.dense_jacobian_feasible`)
everything stays matrix-free: Newton-Krylov (GMRES on Jacobian-vector
products) finds the points, and each point gets its ``--n-eigs`` leading
eigenvalues (exact from the FFT where J is itself a circular convolution, e.g.
at a translation-invariant point; ARPACK elsewhere) instead of the full
Jacobian; no memory basis is formed (it needs the dense J).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import numpy as np
import torch

from rnnprobe.analyses.base import AnalysisSpec, Options, Result, RunContext, option
from rnnprobe.cells.elman import ElmanCell
from rnnprobe.errors import AnalysisError, InputError
from rnnprobe.model import Model
from rnnprobe.numerics import fixedpoints as fp

# the solver's own defaults, so that the command line and the library cannot drift apart
_SOLVER = {k: p.default for k, p in inspect.signature(fp.find_fixed_points).parameters.items()}

__all__ = ["FixedpointsOptions", "FixedpointsResult", "run", "ANALYSIS", "sample_initial_states",
           "task_conditions", "parse_input"]

BASES = ("eigen", "schur")


# ---------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class FixedpointsOptions(Options):
    input: str = option("0", metavar="U", help=(
        "Constant input u*: one number for every input channel, or one per channel separated by commas "
        "(e.g. 0,1,0)."))
    input_from_task: bool = option(False, help=(
        "Find points for every distinct constant input condition of the task: the values of the channels "
        "that are constant within every trial (e.g. context cues), the other channels at 0."))
    max_conditions: int = option(8, min=1, help="With --input-from-task: at most this many conditions (evenly spaced).")
    n_init: int = option(1024, min=1, help="Initial states per input condition.")
    noise: float = option(0.5, min=0.0, help=(
        "Std of the Gaussian noise added to the sampled initial states (gated cells: try 0.1; large noise "
        "puts states where the update gate saturates and F(h) ~ h, i.e. many slow points)."))
    init: str | None = option(None, metavar="FILE", help=(
        "Initial states from a file instead (.npy, or .npz with one array or 'states'): [n, n_state]; "
        "used as given (no noise)."))
    trajectory_steps: int = option(100, min=1, help=(
        "Steps of the autonomous (zero-input) trajectories sampled when no task is known."))
    tol: float = option(_SOLVER["tol"], min=0.0, min_open=True,
                        help="q = 1/2 ||F(h) - h||^2 at or below this: fixed point.")
    slow_tol: float = option(_SOLVER["slow_tol"], min=0.0, min_open=True,
                             help="q at or below this (above --tol): slow point.")
    max_iter: int = option(_SOLVER["max_iter"], min=1, help="Newton iterations per candidate (a cap).")
    warmup_steps: int = option(_SOLVER["warmup_steps"], min=0, help=(
        "First-order (Adam) steps on q for every candidate before Newton: they widen the basins of saddles."))
    merge_tol: float = option(_SOLVER["merge_tol"], min=0.0, help=(
        "Merge candidates taking full, shrinking Newton steps within this RMS distance of each other "
        "(relative to the state scale) so that the rest of the work runs on distinct points; every merge "
        "is verified. 0: never merge."))
    dedupe_tol: float = option(_SOLVER["dedupe_tol"], min=0.0, min_open=True, help=(
        "Points agreeing to this (sup norm, relative to the state scale) are one point."))
    marginal_tol: float = option(1e-3, min=0.0, help=(
        "Eigenvalues within this of the unit circle are marginal (a continuous attractor's directions)."))
    basis: str = option("eigen", metavar="eigen|schur|FILE", help=(
        "Memory basis Xi: real eigen-blocks of J, its real Schur vectors, or a basis file (.npy/.npz "
        "[n_state, m])."))
    cyclic_min_modulus: float = option(0.8, min=0.0, help=(
        "Eigenvalues of Phi with at least this modulus are tested for a cyclic shift of subspaces."))
    cyclic_angle_tol: float = option(0.05, min=0.0, min_open=True, help=(
        "Largest angle error (radians) of a cycle's eigenvalue from an s-th root of unity."))
    max_unconverged: float | None = option(None, min=0.0, max=1.0, help=(
        "Gate: exit 1 when more than this fraction of the candidates is unconverged."))
    n_eigs: int = option(16, min=1, help=(
        "Leading eigenvalues per point when the Jacobian is too large to form (lattice-scale convolutions): "
        "exact by FFT at translation-invariant points, ARPACK elsewhere."))

    def check(self) -> None:
        if self.slow_tol < self.tol:
            raise InputError(f"--slow-tol={self.slow_tol} must be >= --tol={self.tol}")
        if self.basis not in BASES:
            p = Path(self.basis)
            if p.suffix.lower() not in (".npy", ".npz"):
                raise InputError(f"--basis {self.basis!r} must be eigen, schur, or a .npy/.npz basis file")
            if not p.is_file():
                raise InputError(f"--basis {self.basis}: no such file")
        if self.init is not None and not Path(self.init).is_file():
            raise InputError(f"--init {self.init}: no such file")
        if self.input_from_task and self.input.strip() not in ("0", "0.0", ""):
            raise InputError("--input and --input-from-task exclude each other; drop one")
        if self.input.strip():
            try:
                [float(v) for v in self.input.split(",")]
            except ValueError:
                raise InputError(f"--input {self.input!r} must be a number or comma-separated numbers, e.g. 0,1,0") \
                    from None


# ---------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class FixedpointsResult(Result):
    """Fixed / slow points and their linearisation (HDF5 group ``/fixedpoints``).

    Per distinct point (same order everywhere, and in the JSON ``points``):
    ``states`` [K, S], ``q``, ``label`` (int8: 0 fixed, 1 slow), ``count``
    (candidates that reached it), ``condition`` (index into ``inputs``),
    ``jacobians`` [K, S, S], ``input_jacobians`` [K, S, d], ``eigenvalues``
    [K, S] (complex: ``_real``/``_imag``; decreasing modulus), ``stability``
    (int8, codes in the attribute ``stability_codes``), ``n_unstable``,
    ``n_marginal``, ``max_abs_eig``, ``time_constants`` [K, S] (``-1/log|lambda|``
    in steps), ``tau_max`` (the slowest time scale ``max 1/|log|lambda||``),
    and, when known, ``time_constants_time`` / ``tau_max_time`` (times ``dt``)
    and ``ct_eigenvalues`` ``(lambda - 1)/alpha``.
    """

    analysis = "fixedpoints"
    states: np.ndarray
    q: np.ndarray
    label: np.ndarray
    count: np.ndarray
    condition: np.ndarray
    inputs: np.ndarray
    jacobians: np.ndarray
    input_jacobians: np.ndarray
    eigenvalues: np.ndarray
    stability: np.ndarray
    n_unstable: np.ndarray
    n_marginal: np.ndarray
    max_abs_eig: np.ndarray
    time_constants: np.ndarray
    tau_max: np.ndarray
    candidate_q: np.ndarray
    candidate_label: np.ndarray
    candidate_point: np.ndarray
    candidate_condition: np.ndarray
    memory_basis: dict
    pca: dict
    solver: dict
    n_candidates: int
    n_fixed: int
    n_slow: int
    n_unconverged: int
    n_unique: int
    scale: float
    initial_states_source: str
    stability_codes: str = ",".join(fp.STABILITY)
    label_codes: str = ",".join(fp.LABELS)
    time_constants_time: np.ndarray | None = None
    tau_max_time: np.ndarray | None = None
    ct_eigenvalues: np.ndarray | None = None
    dt: float | None = None

    def points(self) -> list[dict]:
        out = []
        for i in range(self.n_unique):
            d = {
                "q": float(self.q[i]),
                "label": fp.LABELS[int(self.label[i])],
                "stability": (fp.STABILITY + ("unknown",))[int(self.stability[i])],
                "n_unstable": int(self.n_unstable[i]),
                "n_marginal": int(self.n_marginal[i]),
                "max_abs_eig": float(self.max_abs_eig[i]),
                "tau_max": float(self.tau_max[i]),
                "count": int(self.count[i]),
                "condition": int(self.condition[i]),
            }
            if self.tau_max_time is not None:
                d["tau_max_time"] = float(self.tau_max_time[i])
            period = int(self.memory_basis["cyclic_period"][i])
            if period:
                d["cyclic_period"] = period
            out.append(d)
        return out

    def summary(self) -> dict:
        mb = self.memory_basis
        cyc = [
            {"point": int(i), "period": int(mb["cyclic_period"][i]), "kappa": int(mb["cyclic_kappa"][i]),
             "residual": float(mb["cyclic_residual"][i]), "modulus": float(mb["cyclic_modulus"][i]),
             "angle_error": float(mb["cyclic_angle_error"][i])}
            for i in np.nonzero(mb["cyclic_period"])[0]
        ]
        stab = np.asarray(self.stability)
        return {
            "n_candidates": self.n_candidates,
            "n_fixed": self.n_fixed,
            "n_slow": self.n_slow,
            "n_unconverged": self.n_unconverged,
            "n_unique": self.n_unique,
            "n_unique_fixed": int((self.label == fp.FIXED).sum()),
            "n_unique_slow": int((self.label == fp.SLOW).sum()),
            "n_stable": int((stab == fp.STABLE).sum()),
            "n_marginal": int((stab == fp.MARGINAL).sum()),
            "n_saddle": int((stab == fp.SADDLE).sum()),
            "n_repeller": int((stab == fp.REPELLER).sum()),
            "n_unknown": int((stab == fp.UNKNOWN).sum()),
            "max_q": float(self.q.max()) if self.n_unique else None,
            "inputs": self.inputs.tolist(),
            "initial_states": self.initial_states_source,
            "points": self.points(),
            "memory_basis": {
                "basis": mb["basis"],
                "max_reconstruction_error": float(mb["reconstruction_error"].max()) if self.n_unique else None,
                "max_condition": float(mb["condition"].max()) if self.n_unique else None,
                "cyclic": cyc,
            },
            "solver": {k: v for k, v in self.solver.items() if not isinstance(v, (list, np.ndarray))},
        }


# ---------------------------------------------------------------------------------
# inputs and initial states
# ---------------------------------------------------------------------------------
def parse_input(text: str, n_inputs: int) -> np.ndarray:
    """``--input``: ``"0"`` -> zeros, ``"0.5"`` -> 0.5 everywhere, ``"0,1,0"`` -> that vector."""
    try:
        values = [float(v) for v in str(text).split(",")] if str(text).strip() else [0.0]
    except ValueError:
        raise InputError(f"--input {text!r} must be a number or comma-separated numbers, e.g. 0,1,0") from None
    if n_inputs == 0:
        if any(v != 0 for v in values):
            raise InputError(f"--input {text!r}: the model takes no inputs; drop --input")
        return np.zeros(0)
    if len(values) == 1:
        return np.full(n_inputs, values[0])
    if len(values) != n_inputs:
        raise InputError(f"--input {text!r} has {len(values)} values but the model takes {n_inputs} inputs; "
                         f"give {n_inputs} comma-separated values or one number")
    if not np.all(np.isfinite(values)):
        raise InputError(f"--input {text!r} has a non-finite value")
    return np.asarray(values)


def task_conditions(inputs: np.ndarray, max_conditions: int):
    """Distinct constant-input conditions of a task: ``(conditions [C, d], trial_condition [B], static [d])``.

    A channel is static when it is constant within every trial (a context cue,
    a frequency cue); a trial's condition is the values of the static channels,
    the other channels at 0. Trials of conditions beyond ``max_conditions``
    (evenly spaced ones are kept) get condition -1.
    """
    inputs = np.asarray(inputs, dtype=np.float64)
    B, _, d = inputs.shape
    static = np.all(inputs == inputs[:, :1, :], axis=(0, 1))
    cond = np.where(static[None, :], inputs[:, 0, :], 0.0)
    conds, trial = np.unique(cond, axis=0, return_inverse=True)
    trial = trial.reshape(-1)
    C = conds.shape[0]
    if C > max_conditions:
        keep = np.unique(np.round(np.linspace(0, C - 1, max_conditions)).astype(int))
        remap = np.full(C, -1)
        remap[keep] = np.arange(keep.size)
        conds, trial = conds[keep], remap[trial]
    return conds, trial, static


def _load_array(path: str, option: str, key: str) -> np.ndarray:
    """The array given with ``--<option> path``: an .npy, or the .npz entry ``key`` (or its only entry)."""
    p = Path(path)
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"--{option} {p}: cannot read it as .npy/.npz ({e})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        return data
    with data:
        keys = list(data.keys())
        if key not in keys and len(keys) != 1:
            raise InputError(f"--{option} {p}: an .npz with several arrays ({', '.join(keys)}) needs one named "
                             f"'{key}'")
        return data[key if key in keys else keys[0]]


def _load_init(path: str, n_state: int) -> np.ndarray:
    p = Path(path)
    arr = _load_array(path, "init", "states")
    if arr.dtype.kind not in "fiu":
        raise InputError(f"--init {p}: the states must be numbers; got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != n_state or arr.shape[0] < 1:
        raise InputError(f"--init {p}: states must be [n, n_state={n_state}]; got shape {list(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"--init {p}: the states contain non-finite values")
    return arr.astype(np.float64)


def _sample(pool: torch.Tensor, n: int, noise: float, gen: torch.Generator) -> torch.Tensor:
    """``n`` rows of ``pool`` without replacement (all of them when there are fewer), plus noise."""
    idx = torch.randperm(pool.shape[0], generator=gen, device=pool.device)[:n]
    x = pool[idx]
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
    return x


def sample_initial_states(model: Model, options: FixedpointsOptions, ctx: RunContext):
    """Initial states, their inputs and conditions, and the trajectories they came from.

    Returns ``(x0 [n, S], u [n, d], condition [n], conditions [C, d], trajectories [B, T, S] or None, source)``.
    """
    cell = model.cell
    gen = ctx.generator(1)
    d = cell.n_inputs
    if options.input_from_task:
        if not ctx.has_task:
            raise InputError("--input-from-task needs task data: give --task NAME or --data FILE")
        if d == 0:
            raise InputError("--input-from-task: the model takes no inputs")
    traj = None
    with torch.no_grad():
        if ctx.has_task:
            data = ctx.task(batch=max(32, min(256, math.ceil(2 * options.n_init / 25))),
                            why="sampling initial states from the task's trajectories")
            inputs = ctx.tensor(data.inputs)
            traj = cell.rollout(cell.initial_state(inputs.shape[0]), inputs)
            source = f"task trajectories ({data.spec}, {inputs.shape[0]} trials x {inputs.shape[1]} steps)"
        else:
            B = max(8, math.ceil(2 * options.n_init / options.trajectory_steps))
            s0 = torch.randn(B, cell.n_state, generator=gen, dtype=ctx.dtype, device=ctx.device)
            traj = cell.autonomous(s0, options.trajectory_steps)
            source = (f"autonomous trajectories ({B} from standard-normal states x "
                      f"{options.trajectory_steps} steps, zero input)")
    if options.input_from_task:
        conds, trial_cond, static = task_conditions(data.inputs, options.max_conditions)
        if not static.any():
            ctx.warn("--input-from-task: no input channel is constant within the trials; using u* = 0")
        conds_t = ctx.tensor(conds)
    else:
        conds_t = ctx.tensor(parse_input(options.input, d)[None, :]) if d else ctx.tensor(np.zeros((1, 0)))
        trial_cond = np.zeros(traj.shape[0], dtype=int)
    if options.init is not None:
        arr = ctx.tensor(_load_init(options.init, cell.n_state))
        x0 = torch.cat([arr] * conds_t.shape[0])
        cond = torch.arange(conds_t.shape[0], device=ctx.device).repeat_interleave(arr.shape[0])
        source = f"file {options.init} ({arr.shape[0]} states per condition)"
    else:
        xs, cs = [], []
        for c in range(conds_t.shape[0]):  # one draw per input condition (a handful)
            rows = torch.as_tensor(np.nonzero(trial_cond == c)[0], device=ctx.device)
            pool = traj[rows].reshape(-1, cell.n_state)
            if pool.shape[0] < options.n_init:
                ctx.warn(f"only {pool.shape[0]} trajectory states for condition {c}; using all of them "
                         f"instead of --n-init {options.n_init}")
            xs.append(_sample(pool, options.n_init, options.noise, gen))
            cs.append(torch.full((xs[-1].shape[0],), c, dtype=torch.long, device=ctx.device))
        x0, cond = torch.cat(xs), torch.cat(cs)
    return x0, conds_t[cond], cond, conds_t, traj, source


# ---------------------------------------------------------------------------------
# the analysis
# ---------------------------------------------------------------------------------
def _readout_jacobian(cell, states: torch.Tensor) -> torch.Tensor | None:
    if not cell.has_readout or states.shape[0] == 0:
        return None
    return cell.readout_jacobian(states)


def _pca(traj: torch.Tensor | None, gen: torch.Generator) -> dict:
    """Top three principal axes of the trajectory states, and a few trajectories projected on them."""
    if traj is None:
        return {}
    X = traj.reshape(-1, traj.shape[-1])
    rows = 8192 if X.shape[1] <= 4096 else max(64, 2**25 // X.shape[1])  # lattice-scale states: fewer rows
    if X.shape[0] > rows:
        X = X[torch.randperm(X.shape[0], generator=gen, device=X.device)[:rows]]
    mean = X.mean(0)
    if X.shape[1] > 4096:  # three axes of a lattice-scale state: a randomized SVD, not a full one
        # svd_lowrank draws from torch's global generator: seed it from the run's generator
        # so that --seed fixes the axes, and leave the caller's global state as it was
        devices = [X.device] if X.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen, device=X.device).item()))
            _, sv, V = torch.svd_lowrank(X - mean, q=min(8, min(X.shape)), niter=4)
        Vh = V.T
        sv = torch.cat([sv, ((X - mean) ** 2).sum().sub(sv.pow(2).sum()).clamp_min(0).sqrt()[None]])
    else:
        _, sv, Vh = torch.linalg.svd(X - mean, full_matrices=False)
    k = min(3, Vh.shape[0])
    comps = Vh[:k]
    var = sv**2
    shown = traj[: min(16, traj.shape[0])]
    return {
        "mean": mean.cpu().numpy(),
        "components": comps.cpu().numpy(),
        "explained_variance_ratio": (var[:k] / var.sum().clamp_min(1e-300)).cpu().numpy(),
        "trajectories": ((shown - mean) @ comps.T).cpu().numpy(),
    }


def _basis_argument(options: FixedpointsOptions, n_state: int):
    if options.basis in BASES:
        return options.basis
    p = Path(options.basis)
    arr = _load_array(options.basis, "basis", "Xi")
    if arr.ndim != 2 or arr.shape[0] != n_state or arr.dtype.kind not in "fiu" or not np.all(np.isfinite(arr)):
        raise InputError(f"--basis {p}: the basis must be a finite [n_state={n_state}, m] matrix; "
                         f"got shape {list(arr.shape)}, dtype {arr.dtype}")
    if np.linalg.matrix_rank(arr) < arr.shape[1]:
        raise InputError(f"--basis {p}: the {arr.shape[1]} columns are linearly dependent; give independent columns")
    return arr


def run(model: Model, options: FixedpointsOptions, ctx: RunContext) -> FixedpointsResult:
    cell = model.cell
    basis = _basis_argument(options, cell.n_state)
    eps = torch.finfo(cell.dtype).eps
    if options.tol < 0.5 * cell.n_state * (64 * eps) ** 2 * 1e3:
        ctx.warn(f"--tol {options.tol:g} is near the round-off floor of q in {str(cell.dtype).replace('torch.', '')} "
                 f"(about {0.5 * cell.n_state * (64 * eps) ** 2:.1g} for unit-scale states): candidates may end as slow "
                 "points; use --dtype float64 or a larger --tol")
    x0, u, cond, conds, traj, source = sample_initial_states(model, options, ctx)
    fps = fp.find_fixed_points(
        cell, u, x0, tol=options.tol, slow_tol=options.slow_tol, max_iter=options.max_iter,
        warmup_steps=options.warmup_steps, merge_tol=options.merge_tol, dedupe_tol=options.dedupe_tol,
        groups=cond, progress=ctx.progress,
    )
    n_unc = fps.n_label(fp.UNCONVERGED)
    if fps.n_unique == 0:
        ctx.warn(f"no fixed or slow point found: all {fps.n_candidates} candidates are unconverged "
                 f"(q > --slow-tol {options.slow_tol}); try more --n-init, another --noise or a larger --max-iter")
    elif n_unc:
        ctx.warn(f"{n_unc} of {fps.n_candidates} candidates did not converge (q > --slow-tol); "
                 "they are labelled unconverged and are not reported as points")
    if not fp.dense_jacobian_feasible(cell):
        return _run_matrix_free(model, options, ctx, fps, conds, cond, traj, source, n_unc)
    lin = fp.linearize(cell, fps.states, fps.inputs, eigenvectors=(isinstance(basis, str) and basis == "eigen"))
    codes, n_unstable, n_marginal = fp.classify(lin.eigenvalues, options.marginal_tol)
    tau = fp.time_constants(lin.eigenvalues)
    slowest = tau.abs().amax(-1) if fps.n_unique else tau.new_zeros(0)
    R = _readout_jacobian(cell, fps.states)
    try:
        mb = fp.memory_basis(lin.jacobians, lin.input_jacobians, R, basis,
                             eigenvalues=lin.eigenvalues, eigenvectors=lin.eigenvectors)
    except InputError:
        raise
    except RuntimeError as e:  # pragma: no cover - LAPACK failures on pathological Jacobians
        raise AnalysisError(f"memory basis ({options.basis}) failed: {e}") from e
    same_spectrum = isinstance(basis, str)
    cyc = fp.detect_cyclic_shift(mb.Phi, min_modulus=options.cyclic_min_modulus,
                                 angle_tol=options.cyclic_angle_tol,
                                 eigenvalues=lin.eigenvalues if same_spectrum else None)
    n = lambda t: t.detach().cpu().numpy()  # noqa: E731
    cyc_points = [i for i, b in enumerate(cyc.basis) if b is not None]
    width = max([cyc.basis[i].shape[1] for i in cyc_points], default=0)
    cyc_basis = np.zeros((len(cyc_points), cell.n_state, width))
    for j, i in enumerate(cyc_points):  # the cyclic basis in state coordinates: Xi C
        cyc_basis[j, :, : cyc.basis[i].shape[1]] = n(mb.Xi[i] @ cyc.basis[i])
    memory = {
        "basis": mb.kind if mb.kind != "file" else f"file:{options.basis}",
        "Xi": n(mb.Xi),
        "Phi": n(mb.Phi),
        "input_map": n(mb.input_map),
        "readout_map": n(mb.readout_map),
        "condition": n(mb.condition),
        "reconstruction_error": n(mb.reconstruction_error),
        "cyclic_period": n(cyc.period),
        "cyclic_kappa": n(cyc.kappa),
        "cyclic_residual": n(cyc.residual),
        "cyclic_modulus": n(cyc.modulus),
        "cyclic_angle_error": n(cyc.angle_error),
        "cyclic_points": np.asarray(cyc_points, dtype=np.int64),
        "cyclic_basis": cyc_basis,
    }
    return _result(model, ctx, fps, lin, (codes, n_unstable, n_marginal), tau, slowest, memory,
                   conds, cond, traj, source, n_unc)


def _run_matrix_free(model: Model, options: FixedpointsOptions, ctx: RunContext, fps, conds, cond, traj, source,
                     n_unc: int) -> FixedpointsResult:
    """The linearisation and result when the dense Jacobian is not formed (lattice-scale models)."""
    cell = model.cell
    K, S = fps.n_unique, cell.n_state
    if options.basis != "eigen":
        ctx.warn(f"--basis {options.basis}: no memory basis at this size (it needs the dense {S} x {S} Jacobian)")
    lin, info = fp.linearize_matrix_free(cell, fps.states, fps.inputs, k=options.n_eigs)
    k = lin.eigenvalues.shape[-1]
    codes, n_unstable, n_marginal = fp.classify(lin.eigenvalues, options.marginal_tol)
    codes[codes == fp.REPELLER] = fp.SADDLE  # all k leading unstable says nothing about the other S - k
    codes[torch.as_tensor(info["converged"], device=codes.device) < k] = fp.UNKNOWN
    for i, (m, c) in enumerate(zip(info["method"], info["converged"])):
        if c < k:
            ctx.warn(f"point {i}: ARPACK did not converge the {k} leading eigenvalues (many share the largest "
                     "modulus): they are NaN and the point's stability is 'unknown' (try another --n-eigs)")
        if int(n_unstable[i]) == k:
            ctx.warn(f"point {i}: all {k} computed eigenvalues are unstable: n_unstable is at least {k} "
                     "(raise --n-eigs)")
    tau = fp.time_constants(lin.eigenvalues)
    slowest = torch.nan_to_num(tau.abs(), nan=0.0).amax(-1) if K else tau.new_zeros(0)
    nan = np.full(K, np.nan)
    memory = {
        "basis": f"none (matrix-free: the {S} x {S} Jacobian is not formed)",
        "condition": nan, "reconstruction_error": nan,
        "cyclic_period": np.zeros(K, dtype=np.int64), "cyclic_kappa": np.zeros(K, dtype=np.int64),
        "cyclic_residual": nan, "cyclic_modulus": nan, "cyclic_angle_error": nan,
        "cyclic_points": np.zeros(0, dtype=np.int64), "cyclic_basis": np.zeros((0, S, 0)),
    }
    solver = {"linearization": "matrix-free", "eigenvalues_method": list(info["method"]),
              "eigenvalues_converged": list(info["converged"]), "n_eigs": k}
    return _result(model, ctx, fps, lin, (codes, n_unstable, n_marginal), tau, slowest, memory,
                   conds, cond, traj, source, n_unc, solver=solver,
                   stability_codes=",".join(fp.STABILITY + ("unknown",)))


def _result(model: Model, ctx: RunContext, fps, lin, classified, tau, slowest, memory: dict, conds, cond, traj,
            source, n_unc: int, *, solver: dict | None = None, **extra) -> FixedpointsResult:
    """The result of either linearisation (dense or matrix-free) of the points ``fps``.

    ``classified`` is :func:`fp.classify`'s ``(codes, n_unstable, n_marginal)``; ``solver`` is added to the
    solver's statistics and ``extra`` to the result's fields.
    """
    cell = model.cell
    K = fps.n_unique
    codes, n_unstable, n_marginal = classified
    n = lambda t: t.detach().cpu().numpy()  # noqa: E731
    dt = model.dt
    ct = None
    if isinstance(cell, ElmanCell) and (cell.form == "residual" or cell.alpha < 1.0):
        ct = n((lin.eigenvalues - 1.0) / cell.alpha)
    stats = dict(fps.stats)
    stats.pop("active", None)
    stats.update(solver or {})
    return FixedpointsResult(
        states=n(fps.states), q=n(fps.q), label=n(fps.labels), count=n(fps.counts), condition=n(fps.groups),
        inputs=n(conds), jacobians=n(lin.jacobians), input_jacobians=n(lin.input_jacobians),
        eigenvalues=n(lin.eigenvalues), stability=n(codes), n_unstable=n(n_unstable), n_marginal=n(n_marginal),
        max_abs_eig=n(lin.eigenvalues.abs()[:, 0]) if K else np.zeros(0), time_constants=n(tau),
        tau_max=n(slowest), candidate_q=n(fps.candidate_q), candidate_label=n(fps.candidate_labels),
        candidate_point=n(fps.candidate_point), candidate_condition=n(cond),
        memory_basis=memory, pca=_pca(traj, ctx.generator(2)), solver=stats,
        n_candidates=fps.n_candidates, n_fixed=fps.n_label(fp.FIXED), n_slow=fps.n_label(fp.SLOW),
        n_unconverged=n_unc, n_unique=K, scale=fps.scale, initial_states_source=source,
        time_constants_time=None if dt is None else n(tau) * dt,
        tau_max_time=None if dt is None else n(slowest) * dt,
        ct_eigenvalues=ct, dt=dt, **extra,
    )


def gate(result: FixedpointsResult, options: FixedpointsOptions) -> list[str]:
    if options.max_unconverged is None or result.n_candidates == 0:
        return []
    frac = result.n_unconverged / result.n_candidates
    if frac > options.max_unconverged:
        return [f"{result.n_unconverged} of {result.n_candidates} candidates unconverged "
                f"({frac:.3g} > --max-unconverged {options.max_unconverged})"]
    return []



ANALYSIS = AnalysisSpec(
    name="fixedpoints",
    help="Fixed and slow points, their Jacobians and stability, and the memory basis.",
    description=(
        "Finds the fixed points (q = 1/2 ||F(h, u*) - h||^2 <= --tol) and slow points (q <= --slow-tol) of the "
        "network at a constant input u* from states sampled on its trajectories (the task's when one is known, "
        "else autonomous ones) plus noise, with a batched float64 Newton-Krylov / Levenberg-Marquardt solver; "
        "unconverged candidates are labelled so and never reported as points. Each distinct point gets its "
        "Jacobians, eigenvalues, stability, time constants and memory basis J = Xi Phi Xi^+ with the input "
        "map Xi^+ B, the readout map W_r Xi and a test for a cyclic shift of memory subspaces."
    ),
    options=FixedpointsOptions,
    run=run,
    example="rnnprobe fixedpoints sample_checkpoints/flipflop_rnn64.pt --n-init 512 --noise 0.5",
    plot="rnnprobe.plots.fixedpoints:plot",
    gate=gate,
    uses_task=True,
)
