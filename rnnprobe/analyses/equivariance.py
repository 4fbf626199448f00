"""``rnnprobe equivariance``: how exactly a network respects a group, which symmetries its weights have,
and how many neutral modes the symmetry protects.

Method (Mo 2026, "Symmetry-Protected Lyapunov Neutral Modes in Equivariant
Recurrent Networks"): for a group G acting on states by D(g) and on inputs
by D_u(g), the step equivariance error

    E_eq = max_{x, g} ||F(D(g) x, D_u(g) u) - D(g) F(x, u)|| / (1 + ||F(x, u)||)

over sampled states x (with the inputs u seen there) and group elements g
(all of a finite group up to ``--elements``, random ones of a Lie group),
computed for every (element, state) pair in one batched program. Also: the
readout's equivariance (or invariance) error, for Lie groups the
infinitesimal error ``||A F - dF/dh A x - dF/du A_u u||`` per generator (by
Jacobian-vector products), and the rollout error against time (does a
trajectory started at g.x stay g times the trajectory from x?).

``--discover`` searches the weights for signed-permutation symmetries (the
only exact linear symmetries of a pointwise nonlinearity) and the commutant of
W_hh, saying which of its generators survive the nonlinearity
(:mod:`rnnprobe.discovery`).

For a Lie group, the orbit dimension dim(G/H) at a state x is the rank of
``{A_i x}``: at least that many Lyapunov exponents are protected at zero on a
compact invariant set (Mo's theorem). The expected number is measured on the
zero-input attractor and set beside the number of near-zero exponents found
by :func:`rnnprobe.numerics.lyapunov.lyapunov_spectrum`.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from rnnprobe.analyses.base import AnalysisSpec, Options, Result, RunContext, option
from rnnprobe.errors import InputError, RnnprobeError
from rnnprobe.groups import Action, Group, parse_group
from rnnprobe.model import Model

__all__ = ["EquivarianceOptions", "EquivarianceResult", "run", "step_errors", "rollout_errors",
           "infinitesimal_errors", "orbit_ranks", "dtype_floor", "ANALYSIS"]

_CHUNK_ELEMENTS = 1 << 22  # entries per [elements, states, n] tensor of one batched step


@dataclasses.dataclass(frozen=True, kw_only=True)
class EquivarianceOptions(Options):
    group: str | None = option(
        None, metavar="SPEC",
        help="The group: sign, cyclic[:SHIFT], so2[:k1,k2,...], perm:FILE or file:FILE.npz. Default: the "
             "checkpoint sidecar's 'symmetry', else the group --discover finds.")
    input_action: str | None = option(
        None, metavar="ACTION",
        help="How inputs transform: trivial, sign, shift, rotate or rotate:K (pairs from channel K on). "
             "Default: what the group implies (sign flips them, the others leave them fixed).")
    output_action: str | None = option(
        None, metavar="ACTION", help="How outputs transform: trivial, sign, shift or rotate (as --input-action).")
    states: str = option(
        "task", metavar="task|random|FILE",
        help="Where the states x come from: task (trajectories on the task data, with the inputs seen "
             "there), random (standard normal, zero input), or FILE (.npz with states [S, n_state] and "
             "optional inputs [S, n_inputs], or .npy states).")
    samples: int = option(1000, min=1, help="Number of sampled states.")
    elements: int = option(64, min=1, help="Group elements: all of a finite group up to this many (the "
                                           "identity and random others beyond), or this many random "
                                           "elements of a Lie group.")
    max_error: float | None = option(None, min=0.0, metavar="E",
                                     help="Gate: exit 1 when the step equivariance error exceeds E.")
    discover: bool = option(False, help="Search the weights for signed-permutation symmetries and the "
                                        "commutant of W_hh, and say which survive the nonlinearity.")
    tol: float = option(1e-6, min=0.0, min_open=True,
                        help="Relative tolerance of --discover: weights equal within tol * max|weight|.")
    rollout_steps: int = option(200, min=1, help="Length of the rollout error against time (the task's "
                                                 "inputs first, then zero input).")
    neutral_tol: float = option(1e-3, min=0.0, min_open=True,
                                help="Lyapunov exponents with |lambda| below this (per step) count as neutral.")
    lyapunov_steps: int = option(1000, min=10, help="Steps of the zero-input Lyapunov run that counts the "
                                                    "observed neutral modes (Lie groups only).")

    def check(self) -> None:
        if self.states not in ("task", "random") and not Path(self.states).suffix:
            raise InputError(f"--states {self.states!r} must be task, random or a .npz / .npy file")


@dataclasses.dataclass
class EquivarianceResult(Result):
    """The report's ``/equivariance`` group (see ``summary()`` for the JSON keys)."""

    analysis = "equivariance"
    group: str | None
    group_name: str | None
    continuous: bool
    error: float | None
    mean_error: float | None
    worst_element: str | None
    readout_error: float | None
    infinitesimal_error: float | None
    rollout_error_final: float | None
    trained_dtype: str
    dtype_floor: float
    analysis_dtype: str
    analysis_floor: float
    state_source: str
    n_states: int
    element_labels: list
    per_element_error: np.ndarray | None
    per_element_mean: np.ndarray | None
    per_element_readout_error: np.ndarray | None
    per_state_error: np.ndarray | None
    infinitesimal_per_generator: np.ndarray | None
    rollout_time: np.ndarray | None
    rollout_error: np.ndarray | None
    rollout_mean_error: np.ndarray | None
    orbit_rank: np.ndarray | None
    attractor_orbit_rank: np.ndarray | None
    expected_neutral_modes: int | None
    observed_neutral_modes: int | None
    neutral_exponents: np.ndarray | None
    tangent_exponents: np.ndarray | None
    neutral_note: str
    discovered: dict | None
    errors: np.ndarray | None = dataclasses.field(default=None, metadata={"report": False})

    def summary(self) -> dict:
        out = {
            "group": self.group,
            "group_name": self.group_name,
            "error": self.error,
            "mean_error": self.mean_error,
            "worst_element": self.worst_element,
            "readout_error": self.readout_error,
            "infinitesimal_error": self.infinitesimal_error,
            "rollout_error_final": self.rollout_error_final,
            "dtype_floor": self.dtype_floor,
            "trained_dtype": self.trained_dtype,
            "analysis_dtype": self.analysis_dtype,
            "analysis_floor": self.analysis_floor,
            "states": self.state_source,
            "n_states": self.n_states,
            "n_elements": len(self.element_labels),
            "discovered": None if self.discovered is None else _discovered_summary(self.discovered),
            "expected_neutral_modes": self.expected_neutral_modes,
            "observed_neutral_modes": self.observed_neutral_modes,
            "neutral_modes": self.neutral_note,
        }
        if self.tangent_exponents is not None and np.isfinite(self.tangent_exponents).any():
            out["tangent_exponent"] = float(np.nanmean(self.tangent_exponents))
        return out


def _discovered_summary(d: dict) -> dict:
    """The discovery as JSON (without the large arrays kept for the report)."""
    keep = ("group", "order", "generators", "complete", "readout_equivariant", "output_action", "signs_allowed",
            "tol", "commutant_dim", "commutant_method", "continuous_dim", "continuous_compact_dim",
            "continuous", "notes")
    return {k: d[k] for k in keep if k in d}


# ---- measures (public: reusable on any cell and group) -----------------------------------
def dtype_floor(name: str) -> float:
    """Machine epsilon of the dtype named ``name`` (``float32`` -> 1.19e-7); float64's for unknown names."""
    dt = getattr(torch, str(name).replace("torch.", ""), None)
    if isinstance(dt, torch.dtype) and dt.is_floating_point:
        return float(torch.finfo(dt).eps)
    return float(torch.finfo(torch.float64).eps)


def _chunks(n_elements: int, per_element: int):
    step = max(1, _CHUNK_ELEMENTS // max(per_element, 1))
    for start in range(0, n_elements, step):
        yield np.arange(start, min(n_elements, start + step))


def _is_identity(action: Action) -> np.ndarray:
    if action.n == 0:
        return np.ones(action.size, dtype=bool)
    if action.perm is not None:
        return np.all(action.perm == np.arange(action.n), axis=1) & np.all(action.sign == 1, axis=1)
    return np.all(np.abs(action.dense - np.eye(action.n)) <= 1e-15, axis=(1, 2))


def step_errors(cell, group: Group, X: torch.Tensor, U: torch.Tensor) -> dict:
    """step_errors(cell, group, X, U) -> dict of tensors

    For every element g of the finite ``group`` (a Lie group's elements drawn
    by :meth:`Group.sample`) and state ``X`` [S, n] with input ``U`` [S, d]:
    ``errors`` [G, S] = ``||F(g.x, g.u) - g.F(x, u)|| / (1 + ||F(x, u)||)``;
    ``readout_errors`` [G, S] = ``||y(g.F) - g.y(F)|| / (1 + ||y(F)||)`` at
    the next states F = F(x, u) (None without a readout); ``next`` [S, n].
    Elements are batched (chunked only to bound memory).
    """
    S, n = X.shape
    FX = cell.step(X, U)
    denom = 1.0 + torch.linalg.vector_norm(FX, dim=-1)
    has_readout = cell.n_outputs > 0
    if has_readout:
        Y = cell.readout(FX)
        ydenom = 1.0 + torch.linalg.vector_norm(Y, dim=-1)
    G = group.hidden.size
    errors = torch.empty(G, S, dtype=X.dtype, device=X.device)
    yerrors = torch.empty(G, S, dtype=X.dtype, device=X.device) if has_readout else None
    for idx in _chunks(G, S * max(n, cell.n_inputs)):
        hidden, inputs = group.hidden.take(idx), group.inputs.take(idx)
        gX = hidden.apply(X).reshape(-1, n)
        gU = inputs.apply(U).reshape(len(idx) * S, -1)
        F_g = cell.step(gX, gU).reshape(len(idx), S, n)
        gF = hidden.apply(FX)
        errors[idx] = torch.linalg.vector_norm(F_g - gF, dim=-1) / denom
        if has_readout:
            gY = group.outputs.take(idx).apply(Y)
            yerrors[idx] = torch.linalg.vector_norm(cell.readout(gF) - gY, dim=-1) / ydenom
    return {"errors": errors, "readout_errors": yerrors, "next": FX}


def infinitesimal_errors(cell, A: torch.Tensor, A_u: torch.Tensor, X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """infinitesimal_errors(cell, A [k, n, n], A_u [k, d, d], X [S, n], U [S, d]) -> [k, S]

    ``||A F(x, u) - dF/dh (A x) - dF/du (A_u u)|| / (1 + ||F(x, u)||)`` for each
    Lie-algebra generator: the derivative at t = 0 of the equivariance
    condition ``F(e^{tA} x, e^{tA_u} u) = e^{tA} F(x, u)``. The state part is one
    Jacobian-vector product per generator (``cell.jvp``), the input part uses
    ``cell.input_jacobian`` (d is small).
    """
    FX = cell.step(X, U)
    denom = 1.0 + torch.linalg.vector_norm(FX, dim=-1)
    AX = torch.einsum("kij,sj->sik", A, X)  # [S, n, k]
    JAx = cell.jvp(X, U, AX)  # [S, n, k]
    AF = torch.einsum("kij,sj->sik", A, FX)
    resid = AF - JAx
    if U.shape[-1] and bool(torch.any(A_u != 0)):
        AuU = torch.einsum("kij,sj->sik", A_u, U)  # [S, d, k]
        resid = resid - torch.matmul(cell.input_jacobian(X, U), AuU)
    return (torch.linalg.vector_norm(resid, dim=1) / denom[:, None]).T


def rollout_errors(cell, group: Group, X0: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rollout_errors(cell, group, X0 [R, n], inputs [R, T, d]) -> (max [T], mean [T])

    Trajectories from ``X0`` and from every ``g.X0`` (inputs ``g.u_t``), all
    elements and starts batched; at each step ``||s^g_t - g.s_t|| / (1 + ||s_t||)``,
    its maximum and mean over elements and starts.
    """
    G, (R, n), T = group.hidden.size, X0.shape, inputs.shape[1]
    s = X0
    sg = group.hidden.apply(X0).reshape(G * R, n)
    gin = group.inputs.apply(inputs)  # [G, R, T, d]
    worst = torch.empty(T, dtype=X0.dtype, device=X0.device)
    mean = torch.empty(T, dtype=X0.dtype, device=X0.device)
    for t in range(T):
        s = cell.step(s, inputs[:, t])
        sg = cell.step(sg, gin[:, :, t].reshape(G * R, -1))
        e = torch.linalg.vector_norm(sg.reshape(G, R, n) - group.hidden.apply(s), dim=-1)
        e = e / (1.0 + torch.linalg.vector_norm(s, dim=-1))
        worst[t], mean[t] = e.max(), e.mean()
    return worst, mean


def orbit_ranks(A: torch.Tensor, X: torch.Tensor, *, rtol: float = 1e-6) -> torch.Tensor:
    """orbit_ranks(A [k, n, n], X [S, n]) -> [S] ints: rank of {A_i x}, the orbit dimension dim(G/H_x).

    Singular values of ``[A_1 x, ..., A_k x]`` above ``rtol * ||x|| * max_i ||A_i||_2`` count.
    """
    M = torch.einsum("kij,sj->sik", A, X)
    sv = torch.linalg.svdvals(M) if M.shape[-1] else torch.zeros(X.shape[0], 0, dtype=X.dtype, device=X.device)
    scale = rtol * torch.linalg.vector_norm(X, dim=-1) * float(torch.linalg.matrix_norm(A, ord=2).max())
    return (sv > scale[:, None]).sum(dim=-1)


# ---- the states ------------------------------------------------------------------------------
def _sample_states(model: Model, options: EquivarianceOptions, ctx: RunContext):
    """(X [S, n], U [S, d], description, task inputs [B, T, d] or None)."""
    cell = model.cell
    n, d = cell.n_state, cell.n_inputs
    if options.states == "random":
        g = ctx.generator(11)
        X = torch.randn(options.samples, n, generator=g, dtype=ctx.dtype, device=ctx.device)
        return X, torch.zeros(options.samples, d, dtype=ctx.dtype, device=ctx.device), "random", None
    if options.states == "task":
        probe = ctx.task(batch=1, why="--states task (the default) samples states along task trajectories")
        T = probe.inputs.shape[1]
        data = ctx.task(batch=max(1, math.ceil(options.samples / T)),
                        why="--states task (the default) samples states along task trajectories")
        inputs = ctx.tensor(data.inputs)
        B, T = inputs.shape[:2]
        traj = cell.rollout(cell.initial_state(B), inputs)
        before = torch.cat([cell.initial_state(B)[:, None], traj[:, :-1]], dim=1)  # the state each input meets
        total = B * T
        pick = np.sort(ctx.rng(12).choice(total, size=min(options.samples, total), replace=False))
        pick_t = torch.as_tensor(pick, device=ctx.device)
        X = before.reshape(total, n)[pick_t]
        U = inputs.reshape(total, d)[pick_t]
        return X, U, f"task ({data.name}, {B} trials x {T} steps)", inputs
    path = Path(options.states)
    if not path.is_file():
        raise InputError(f"--states file not found; give task, random or an .npz / .npy of states", path=path)
    try:
        if path.suffix == ".npy":
            arrays = {"states": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"--states: cannot read ({e}); give an .npz with 'states' [S, {n}] "
                         f"(and optional 'inputs' [S, {d}]) or an .npy", path=path) from None
    if "states" not in arrays:
        raise InputError(f"--states: no array 'states' (found {', '.join(arrays) or 'nothing'}); "
                         f"give states [S, {n}]", path=path)
    Xn = np.asarray(arrays["states"], dtype=np.float64)
    if Xn.ndim != 2 or Xn.shape[1] != n or Xn.shape[0] == 0:
        raise InputError(f"--states: 'states' has shape {list(Xn.shape)}; the model's states are [S, {n}]",
                         path=path)
    Un = np.asarray(arrays.get("inputs", np.zeros((Xn.shape[0], d))), dtype=np.float64)
    if Un.shape != (Xn.shape[0], d):
        raise InputError(f"--states: 'inputs' has shape {list(Un.shape)}; need [{Xn.shape[0]}, {d}]", path=path)
    if not (np.isfinite(Xn).all() and np.isfinite(Un).all()):
        raise InputError("--states: the states or inputs hold non-finite values", path=path)
    keep = min(options.samples, Xn.shape[0])
    return ctx.tensor(Xn[:keep]), ctx.tensor(Un[:keep]), f"file {path.name}", None


# ---- the group -------------------------------------------------------------------------------
def _resolve_group(model: Model, options: EquivarianceOptions, discovered_group: Group | None
                   ) -> tuple[Group | None, str | None]:
    cell = model.cell
    spec, ia, oa = options.group, options.input_action, options.output_action
    sidecar = model.metadata.get("symmetry") if isinstance(model.metadata.get("symmetry"), dict) else None
    if spec is None and sidecar and isinstance(sidecar.get("group"), str):
        spec = sidecar["group"]
        ia = ia if ia is not None else sidecar.get("input_action")
        oa = oa if oa is not None else sidecar.get("output_action")
    if spec is not None:
        return parse_group(spec, n_state=cell.n_state, n_inputs=cell.n_inputs, n_outputs=cell.n_outputs,
                           input_action=ia, output_action=oa), spec
    if options.discover:
        return discovered_group, None if discovered_group is None else "discovered"
    raise InputError("--group is required (sign, cyclic[:SHIFT], so2[:k1,...], perm:FILE, file:FILE.npz); "
                     "the checkpoint's sidecar names no 'symmetry'; or give --discover to search the weights")


# ---- discovery -------------------------------------------------------------------------------
def _discover(model: Model, options: EquivarianceOptions, ctx: RunContext) -> tuple[dict, Group | None]:
    """The --discover report (a dict for the HDF5 subgroup) and the finite group found (or None)."""
    from rnnprobe import discovery as dsc
    from rnnprobe.cells import ElmanCell, GRUCell, LSTMCell

    cell = model.cell
    notes: list[str] = []
    out: dict = {"tol": options.tol}
    to_np = lambda x: None if x is None else x.detach().cpu().to(torch.float64).numpy()  # noqa: E731
    if isinstance(cell, ElmanCell):
        W, U, b = to_np(cell.W_hh), to_np(cell.W_uh), to_np(cell.b)
        blocks_hh, blocks_in, biases, signs, copies = [W], [U] if U.size else [], [b], cell.nl.odd, 1
        W_r, b_r = to_np(cell.W_r), to_np(cell.b_r)
    elif isinstance(cell, (GRUCell, LSTMCell)):
        G = cell.gates
        Wh, Wi = np.split(to_np(cell.W_hh), G), np.split(to_np(cell.W_ih), G)
        bi, bh = np.split(to_np(cell.b_ih), G), np.split(to_np(cell.b_hh), G)
        blocks_hh, blocks_in = Wh, [x for x in Wi if x.size]
        # the GRU's candidate gate keeps b_hn inside r * (W_hn h + b_hn): its own vector
        biases = ([bi[0] + bh[0], bi[1] + bh[1], bi[2], bh[2]] if isinstance(cell, GRUCell)
                  else [x + y for x, y in zip(bi, bh)])
        signs, copies = False, 2 if isinstance(cell, LSTMCell) else 1
        W_r, b_r = to_np(cell.W_r), to_np(cell.b_r)
        notes.append(f"{cell.kind.upper()}: permutations acting alike on every gate; no sign flips "
                     "(the sigmoid gates are not odd)")
    else:
        out.update(group="not searched", order=None, generators=[], complete=False,
                   notes=[f"a {cell.kind} cell exposes no weight matrices to search; give --group"])
        return out, None
    sym = dsc.signed_permutation_symmetries(blocks_hh, blocks_in, biases, signs=signs, tol=options.tol)
    if not sym.complete:
        notes.append(f"the search stopped after {sym.nodes} refinements: there may be more symmetries")
    N, d = blocks_hh[0].shape[0], cell.n_inputs
    gens = sym.generators
    readout_ok = None
    if gens and W_r is not None:
        acts = [dsc.readout_action(g, W_r, b_r, sym.tol) for g in gens]
        readout_ok = all(a is not None for a in acts)
        if readout_ok:
            gens = [dataclasses.replace(g, output_perm=a[0], output_sign=a[1]) for g, a in zip(gens, acts)]
        else:
            notes.append("the readout is not equivariant under the symmetries found: outputs taken as invariant")
    group = None
    if gens:
        elements, words, closed = dsc.generate_group(gens, N, d)
        name = dsc.name_group(gens, elements, closed)
        group = dsc.as_group(elements, words, name, n_state=cell.n_state, n_outputs=cell.n_outputs,
                             state_copies=copies)
        out.update(order=len(elements) if closed else None)
        if not closed:
            notes.append(f"the group has more than {len(elements)} elements; its first {len(elements)} are used")
        out["perms"] = np.stack([g.perm for g in gens])
        out["signs"] = np.stack([g.sign for g in gens])
        out["input_perms"] = np.stack([g.input_perm for g in gens]).reshape(len(gens), -1)
        out["input_signs"] = np.stack([g.input_sign for g in gens]).reshape(len(gens), -1)
        if readout_ok:
            out["output_action"] = [dsc.describe_output(g) for g in gens]
    else:
        name = "trivial"
        out.update(order=1)
    out.update(group=name, generators=[dsc.describe(g) for g in gens], complete=sym.complete,
               readout_equivariant=readout_ok, signs_allowed=bool(signs))

    # the continuous side: the commutant of W_hh and what survives
    if isinstance(cell, ElmanCell):
        try:
            basis, method = dsc.commutant(W, tol=options.tol)
        except ValueError as e:
            notes.append(f"commutant not computed: {e}")
            basis, method = None, None
        if basis is not None:
            survivors = dsc.surviving_generators(basis, nonlinearity=cell.nl, W_uh=U, b=b, seed=ctx.seed)
            out.update(commutant_dim=int(basis.shape[0]), commutant_method=method,
                       continuous_dim=int(survivors.shape[0]))
            compact = dsc.skew_part(survivors)
            out["continuous_compact_dim"] = int(compact.shape[0])
            if survivors.shape[0]:
                out["continuous"] = (f"{survivors.shape[0]}-dimensional continuous symmetry of the {cell.nonlinearity} "
                                     f"cell ({compact.shape[0]} compact rotation generators)")
                out["continuous_generators"] = survivors[:16]
                if survivors.shape[0] > 16:
                    notes.append(f"the first 16 of {survivors.shape[0]} continuous generators are stored")
            else:
                out["continuous"] = (f"none: the commutant of W_hh ({basis.shape[0]}-dimensional) does not "
                                     f"survive the {cell.nonlinearity} nonlinearity, bias and inputs")
    else:
        notes.append("commutant: needs a single W_hh (Elman cells)")
    out["notes"] = notes
    return out, group


# ---- the analysis ---------------------------------------------------------------------------
def run(model: Model, options: EquivarianceOptions, ctx: RunContext) -> EquivarianceResult:
    cell = model.cell
    discovered, found = _discover(model, options, ctx) if options.discover else (None, None)
    group, spec = _resolve_group(model, options, found)
    X, U, source, task_inputs = _sample_states(model, options, ctx)
    trained = str(model.trained_dtype)
    common = dict(trained_dtype=trained, dtype_floor=dtype_floor(trained),
                  analysis_dtype=str(ctx.dtype).replace("torch.", ""), analysis_floor=float(torch.finfo(ctx.dtype).eps),
                  state_source=source, n_states=int(X.shape[0]), discovered=discovered)
    if group is None:
        if options.max_error is not None:
            ctx.warn("--max-error not applied: --discover found no symmetry and no --group was given")
        return EquivarianceResult(
            group=None, group_name="trivial (nothing discovered)", continuous=False, error=None, mean_error=None,
            worst_element=None, readout_error=None, infinitesimal_error=None, rollout_error_final=None,
            element_labels=[], per_element_error=None, per_element_mean=None, per_element_readout_error=None,
            per_state_error=None, infinitesimal_per_generator=None, rollout_time=None, rollout_error=None,
            rollout_mean_error=None, orbit_rank=None, attractor_orbit_rank=None, expected_neutral_modes=None,
            observed_neutral_modes=None, neutral_exponents=None, tangent_exponents=None,
            neutral_note="no group: --discover found no symmetry", **common)

    elements, _ = group.sample(options.elements, ctx.rng(13))
    ctx.progress.start("equivariance", total=3)
    res = step_errors(cell, elements, X, U)
    E, EY = res["errors"], res["readout_errors"]
    ctx.progress.advance()
    non_identity = ~(_is_identity(elements.hidden) & _is_identity(elements.inputs))
    flat = E[torch.as_tensor(non_identity, device=E.device)] if non_identity.any() else E
    per_element = E.max(dim=1).values
    # the worst element; among equals (e.g. all exact) a non-identity one
    candidates = per_element.clone()
    candidates[torch.as_tensor(~non_identity, device=E.device)] = -1.0
    worst = int(torch.argmax(candidates if non_identity.any() else per_element))

    inf_err = inf_per = None
    if group.continuous:
        A, A_u, _ = group.generator_matrices(dtype=ctx.dtype, device=ctx.device)
        inf = infinitesimal_errors(cell, A, A_u, X, U)
        inf_per = inf.max(dim=1).values.cpu().numpy()
        inf_err = float(inf_per.max())

    # rollout: task trials from the zero state (task inputs, then zero input), else the first sampled states
    R = max(1, min(X.shape[0], 1024 // elements.hidden.size, 32))
    T = options.rollout_steps
    rin = torch.zeros(R, T, cell.n_inputs, dtype=ctx.dtype, device=ctx.device)
    if task_inputs is not None:
        R = min(R, task_inputs.shape[0])
        rin = rin[:R]
        L = min(T, task_inputs.shape[1])
        rin[:, :L] = task_inputs[:R, :L]
        X0 = cell.initial_state(R)
    else:
        X0 = X[:R]
    r_worst, r_mean = rollout_errors(cell, elements, X0, rin)
    ctx.progress.advance()

    neutral = _neutral_modes(model, group, X, options, ctx) if group.continuous else {
        "orbit_rank": None, "attractor_orbit_rank": None, "expected": None, "observed": None,
        "exponents": None, "tangent": None,
        "note": f"{group.name} is finite: it protects no neutral modes (dim G = 0)"}
    ctx.progress.advance()
    ctx.progress.stop()
    if neutral.get("warning"):
        ctx.warn(neutral["warning"])

    error = float(E.max())
    return EquivarianceResult(
        group=spec, group_name=group.name, continuous=group.continuous, error=error,
        mean_error=float(flat.mean()), worst_element=elements.labels[worst],
        readout_error=None if EY is None else float(EY.max()),
        infinitesimal_error=inf_err, rollout_error_final=float(r_worst[-1]),
        element_labels=list(elements.labels), per_element_error=per_element.cpu().numpy(),
        per_element_mean=E.mean(dim=1).cpu().numpy(),
        per_element_readout_error=None if EY is None else EY.max(dim=1).values.cpu().numpy(),
        per_state_error=E.max(dim=0).values.cpu().numpy(), infinitesimal_per_generator=inf_per,
        rollout_time=np.arange(1, T + 1), rollout_error=r_worst.cpu().numpy(), rollout_mean_error=r_mean.cpu().numpy(),
        orbit_rank=neutral["orbit_rank"], attractor_orbit_rank=neutral["attractor_orbit_rank"],
        expected_neutral_modes=neutral["expected"], observed_neutral_modes=neutral["observed"],
        neutral_exponents=neutral["exponents"], tangent_exponents=neutral["tangent"], neutral_note=neutral["note"],
        errors=E.cpu().numpy(), **common)


def _neutral_modes(model: Model, group: Group, X: torch.Tensor, options: EquivarianceOptions, ctx: RunContext) -> dict:
    """Orbit dimensions at the sampled states and on the zero-input attractor; near-zero Lyapunov exponents there."""
    cell = model.cell
    A, _, _ = group.generator_matrices(dtype=ctx.dtype, device=ctx.device)
    ranks = orbit_ranks(A, X).cpu().numpy()
    # the attractor reached with zero input from (up to) 8 sampled states of generic orbit type
    # (states fixed by part of the group, such as a zero initial state, are passed over)
    generic = np.flatnonzero(ranks == ranks.max())
    B = min(8, generic.size)
    idx = torch.as_tensor(ctx.rng(14).choice(generic, size=B, replace=False), device=X.device)
    warm = 1000
    h = X[idx]
    for _ in range(warm):
        h = cell.step(h, None)
    att = orbit_ranks(A, h).cpu().numpy()
    values, counts = np.unique(att, return_counts=True)
    expected = int(values[np.argmax(counts)])
    out = {"orbit_rank": ranks, "attractor_orbit_rank": att, "expected": expected, "observed": None,
           "exponents": None, "tangent": None}
    try:
        from rnnprobe.numerics.lyapunov import lyapunov_spectrum
    except ImportError:
        out["note"] = (f"expected at least {expected} protected neutral modes (orbit dimension on the zero-input "
                       "attractor); observed: not measured, rnnprobe.numerics.lyapunov is not available")
        return out
    k = min(cell.n_state, 32)
    try:
        est = lyapunov_spectrum(cell, h, None, k=k, steps=options.lyapunov_steps,
                                warmup=max(10, options.lyapunov_steps // 5), generators=A,
                                generator=ctx.generator(15))
    except RnnprobeError as e:  # the equivariance measures stand without the exponents
        out["note"] = (f"expected at least {expected} protected neutral modes; observed: not measured, "
                       f"the zero-input Lyapunov run failed ({e.message})")
        out["warning"] = out["note"]
        return out
    per_init = np.asarray(est.per_init)
    near = np.sum(np.abs(per_init) <= options.neutral_tol, axis=1)
    values, counts = np.unique(near, return_counts=True)
    observed = int(values[np.argmax(counts)])
    tangent = None
    if est.tangent is not None:  # per init and generator; NaN where A h = 0 (a state the group fixes)
        tangent = np.where(np.asarray(est.tangent.xi_norm) > 0, np.asarray(est.tangent.exponents), np.nan)
    out.update(observed=observed, exponents=np.asarray(est.exponents), tangent=tangent)
    out["note"] = (f"expected at least {expected} protected neutral modes, observed {observed} "
                   f"(|lambda| <= {options.neutral_tol:g} per step, zero input, {k} leading exponents)")
    if observed < expected:
        out["warning"] = (f"fewer near-zero Lyapunov exponents ({observed}) than the orbit dimension ({expected}): "
                          "the symmetry is broken or the attractor is not compact")
    return out


def gate(result: EquivarianceResult, options: EquivarianceOptions) -> list[str]:
    if options.max_error is None or result.error is None:
        return []
    if result.error > options.max_error:
        return [f"step equivariance error {result.error:.3g} > --max-error {options.max_error:g} for "
                f"{result.group_name} (worst element: {result.worst_element})"]
    return []



ANALYSIS = AnalysisSpec(
    name="equivariance",
    help="Step equivariance error under a group, symmetry discovery, protected neutral modes.",
    description=(
        "How exactly the network's step commutes with a group (Mo 2026): the step equivariance error "
        "E_eq = max ||F(g.x, g.u) - g.F(x, u)|| / (1 + ||F||) over sampled states and group elements, the "
        "readout's, the infinitesimal error of a Lie group's generators and the rollout error against time. "
        "--discover searches the weights for signed-permutation symmetries and the commutant of W_hh. For a "
        "Lie group, the orbit dimension is compared with the number of near-zero Lyapunov exponents. "
        "--max-error E exits 1 when E_eq > E."),
    options=EquivarianceOptions,
    run=run,
    example="rnnprobe equivariance sample_checkpoints/s1_polar.pt --max-error 1e-7",
    plot="rnnprobe.plots.equivariance:plot",
    gate=gate,
    uses_task=True,
)
