"""Group actions on a recurrent system's state, inputs and outputs.

One parser, shared by ``rnnprobe equivariance --group`` and ``rnnprobe lyapunov --group``:

``sign``
    h, u, y -> -h, -u, -y (order 2).
``cyclic[:SHIFT]``
    cyclic shift of the state coordinates by SHIFT (default 1); the group it
    generates has order N / gcd(N, SHIFT). Inputs and outputs shift too when
    ``input_action`` / ``output_action`` is ``shift`` (their width must equal N).
``so2[:k1,k2,...]``
    rotations acting on consecutive pairs of state coordinates (0,1), (2,3), ...
    with integer frequencies k1, k2, ... (default one pair, k = 1); other
    coordinates fixed. Its generator is block-diagonal. ``output_action=rotate``
    rotates consecutive output pairs with frequency 1 (e.g. (cos, sin) readouts);
    ``rotate:K`` starts the pairs at channel K, leaving channels before K (and
    an unpaired last one) fixed: ``input_action="rotate:1"`` for inputs
    ``(omega, cos, sin)`` whose cue pair rotates while omega is invariant.
``perm:FILE``
    a (signed) permutation from an .npz or .json file with ``perm`` (length N),
    optional ``sign``, and optional ``input_perm``/``input_sign``,
    ``output_perm``/``output_sign``; the group is the cyclic group it generates.
``file:FILE.npz``
    explicit representation matrices: ``hidden`` [G, N, N] with optional
    ``inputs`` [G, d, d] and ``outputs`` [G, o, o] (a finite group's elements),
    or ``generators`` [k, N, N] with optional ``input_generators`` and
    ``output_generators`` (a continuous group's Lie algebra).

A finite group is given by its elements; a continuous one by Lie-algebra
generators A_i (so that exp(t A_i) are elements). Hidden actions that are
signed permutations are applied by gathering, never as dense N x N products.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from rnnprobe.errors import InputError

__all__ = ["Action", "Group", "parse_group", "INPUT_ACTIONS", "OUTPUT_ACTIONS"]

INPUT_ACTIONS = ("trivial", "shift", "sign", "rotate")
OUTPUT_ACTIONS = ("trivial", "shift", "sign", "rotate")


@dataclasses.dataclass(frozen=True)
class Action:
    """G linear maps on R^n: signed permutations (``perm``, ``sign``) or dense matrices.

    ``perm[g, i]`` is the source index of coordinate i: ``(g.x)_i = sign[g, i] * x[perm[g, i]]``.
    """

    n: int
    perm: np.ndarray | None = None  # [G, n] int64
    sign: np.ndarray | None = None  # [G, n] float64
    dense: np.ndarray | None = None  # [G, n, n]

    def __post_init__(self):
        if (self.perm is None) == (self.dense is None):
            raise ValueError("an Action is either a signed permutation or dense")

    @property
    def size(self) -> int:
        return (self.perm if self.perm is not None else self.dense).shape[0]

    @property
    def is_signed_permutation(self) -> bool:
        return self.perm is not None

    def matrices(self) -> np.ndarray:
        """Dense [G, n, n] matrices (for small n; signed permutations are expanded)."""
        if self.dense is not None:
            return self.dense
        G = self.size
        M = np.zeros((G, self.n, self.n))
        rows = np.arange(self.n)
        for g in range(G):
            M[g, rows, self.perm[g]] = self.sign[g]
        return M

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """g.x for every element: x [..., n] -> [G, ..., n]."""
        if self.n == 0:
            return x.expand(self.size, *x.shape)
        if self.perm is not None:
            # one gather straight into the [G, M, n] layout (indexing x[..., perm] and moving the
            # element axis to the front costs about three times as much), then the signs in place
            G, lead = self.size, x.shape[:-1]
            flat = x.reshape(-1, self.n)
            perm = torch.as_tensor(self.perm, device=x.device)
            idx = perm[:, None, :].expand(G, flat.shape[0], self.n)
            out = torch.gather(flat.unsqueeze(0).expand(G, -1, -1), 2, idx)
            if not np.all(self.sign == 1):
                out = out.mul_(torch.as_tensor(self.sign, dtype=x.dtype, device=x.device)[:, None, :])
            return out.reshape(G, *lead, self.n)
        D = torch.as_tensor(self.dense, dtype=x.dtype, device=x.device)
        return torch.einsum("gij,...j->g...i", D, x)

    def take(self, idx) -> "Action":
        idx = np.asarray(idx)
        if self.perm is not None:
            return Action(self.n, perm=self.perm[idx], sign=self.sign[idx])
        return Action(self.n, dense=self.dense[idx])


@dataclasses.dataclass(frozen=True)
class Group:
    """A group acting on (state, inputs, outputs).

    Attributes:
        spec: the specification it was parsed from.
        name: a readable name (``Z_2 (sign)``, ``Z_64 (cyclic shift by 1)``, ``SO(2)^k``).
        continuous: a Lie group given by generators, else a finite group given by elements.
        hidden, inputs, outputs: for a finite group, the elements' actions (the
            identity first); for a continuous group, the Lie-algebra generators
            (dense [k, n, n]).
        labels: one label per element (finite) or generator (continuous).
    """

    spec: str
    name: str
    continuous: bool
    hidden: Action
    inputs: Action
    outputs: Action
    labels: tuple[str, ...]

    @property
    def dim(self) -> int:
        """Dimension of the Lie algebra (0 for a finite group)."""
        return self.hidden.size if self.continuous else 0

    @property
    def order(self) -> int | None:
        return None if self.continuous else self.hidden.size

    def generator_matrices(self, dtype=torch.float64, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Lie-algebra generators (A_h [k,N,N], A_u [k,d,d], A_y [k,o,o]) of a continuous group."""
        if not self.continuous:
            raise InputError(f"group {self.spec!r} is finite: it has no Lie-algebra generators "
                             "(a tangent exponent needs a continuous group such as so2)")
        t = lambda a: torch.as_tensor(a.matrices(), dtype=dtype, device=device)  # noqa: E731
        return t(self.hidden), t(self.inputs), t(self.outputs)

    def sample(self, n: int, generator: np.random.Generator) -> tuple["Group", np.ndarray | None]:
        """Up to ``n`` elements as a finite Group (same actions, subset of elements).

        Finite: all elements if there are at most ``n``, else the identity and
        ``n - 1`` others drawn without replacement. Continuous: the identity and
        ``n - 1`` random elements exp(sum_i t_i A_i), t_i uniform in [-pi, pi);
        the drawn coefficients are returned too ([n, k]).
        """
        if not self.continuous:
            if self.hidden.size <= n:
                return self, None
            idx = np.concatenate([[0], np.sort(generator.choice(np.arange(1, self.hidden.size), n - 1, replace=False))])
            return dataclasses.replace(self, hidden=self.hidden.take(idx), inputs=self.inputs.take(idx),
                                       outputs=self.outputs.take(idx),
                                       labels=tuple(self.labels[i] for i in idx)), None
        k = self.hidden.size
        t = generator.uniform(-math.pi, math.pi, size=(n, k))
        t[0] = 0.0

        def expm(action: Action) -> Action:
            A = torch.as_tensor(action.matrices(), dtype=torch.float64)
            if action.n == 0:
                return Action(0, dense=np.zeros((n, 0, 0)))
            X = torch.einsum("sk,kij->sij", torch.as_tensor(t), A)
            return Action(action.n, dense=torch.linalg.matrix_exp(X).numpy())

        labels = tuple("exp(" + ", ".join(f"{v:.3f}" for v in row) + ")" for row in t)
        return Group(spec=self.spec, name=self.name, continuous=False, hidden=expm(self.hidden),
                     inputs=expm(self.inputs), outputs=expm(self.outputs), labels=labels), t


# ---- constructors ----------------------------------------------------------------
def _identity(n: int, G: int = 1) -> Action:
    return Action(n, perm=np.tile(np.arange(n), (G, 1)), sign=np.ones((G, n)))


def _cyclic_powers(perm: np.ndarray, sign: np.ndarray, max_order: int = 100000) -> tuple[np.ndarray, np.ndarray]:
    """All powers of one signed permutation, identity first, until it returns to the identity."""
    n = perm.size
    perms, signs = [np.arange(n)], [np.ones(n)]
    p, s = perm.copy(), sign.copy()
    while not (np.array_equal(p, np.arange(n)) and np.all(s == 1)):
        perms.append(p)
        signs.append(s)
        if len(perms) > max_order:
            raise InputError(f"the permutation generates a group of order > {max_order}")
        # (g . g_k)(x)_i = sign_i * (g_k x)[perm_i] = sign_i * s[perm_i] * x[p[perm_i]]
        p, s = p[perm], sign * s[perm]
    return np.array(perms), np.array(signs)


def _shift_action(n: int, shift: int, order: int) -> Action:
    idx = np.arange(n)
    perms = np.array([(idx - g * shift) % n for g in range(order)]) if n else np.zeros((order, 0), dtype=np.int64)
    return Action(n, perm=perms.astype(np.int64), sign=np.ones((order, n)))


def _rotation_generator(n: int, freqs: list[int]) -> np.ndarray:
    if 2 * len(freqs) > n:
        raise InputError(f"so2 with {len(freqs)} frequencies needs at least {2 * len(freqs)} coordinates; "
                         f"the state has {n}")
    A = np.zeros((n, n))
    for i, k in enumerate(freqs):
        A[2 * i, 2 * i + 1] = -k
        A[2 * i + 1, 2 * i] = k
    return A


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError("group file not found", path=path)
    if path.suffix == ".json":
        try:
            return {k: np.asarray(v) for k, v in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError) as e:
            raise InputError(f"not a JSON object of arrays ({e})", path=path) from e
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the group file as npz ({e}); give .npz (or .json for perm:)",
                         path=path) from e


def _signed_perm(arrays: dict, prefix: str, n: int, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    key = f"{prefix}perm"
    if key not in arrays:
        return None
    perm = np.asarray(arrays[key]).astype(np.int64).reshape(-1)
    if perm.size != n or not np.array_equal(np.sort(perm), np.arange(n)):
        raise InputError(f"{key} must be a permutation of 0..{n - 1}; got shape {list(perm.shape)}", path=path)
    sign = np.asarray(arrays.get(f"{prefix}sign", np.ones(n)), dtype=np.float64).reshape(-1)
    if sign.size != n or not np.all(np.abs(sign) == 1):
        raise InputError(f"{prefix}sign must have {n} entries of +-1", path=path)
    return perm, sign


def _dense_action(arrays: dict, key: str, G: int, n: int, path: Path) -> Action:
    if key not in arrays:
        if key.startswith("input") or key.startswith("output"):
            return Action(n, dense=np.zeros((G, n, n))) if "generators" in key else _identity(n, G)
        raise InputError(f"missing array {key!r}", path=path)
    M = np.asarray(arrays[key], dtype=np.float64)
    if M.ndim == 2:
        M = M[None]
    if M.shape != (G, n, n):
        raise InputError(f"{key} must have shape [{G}, {n}, {n}]; got {list(M.shape)}", path=path)
    return Action(n, dense=M)


def _side_action(kind: str, what: str, n: int, order: int, *, shift: int = 0, n_state: int = 0,
                 sign_elements: np.ndarray | None = None) -> Action:
    """How inputs or outputs transform under a finite group (identity first)."""
    if kind == "trivial" or n == 0:
        return _identity(n, order)
    if kind == "sign":
        s = np.ones((order, n)) if sign_elements is None else np.repeat(sign_elements[:, None], n, axis=1)
        return Action(n, perm=np.tile(np.arange(n), (order, 1)), sign=s)
    if kind == "shift":
        if n != n_state:
            raise InputError(f"--{what}-action shift needs as many {what}s as state units ({n_state}); "
                             f"the model has {n}: use --{what}-action trivial")
        return _shift_action(n, shift, order)
    raise InputError(f"--{what}-action {kind!r} does not apply to this group")


def parse_group(spec: str, *, n_state: int, n_inputs: int, n_outputs: int,
                input_action: str | None = None, output_action: str | None = None) -> Group:
    """Parse a group specification for a model with these dimensions (see the module docstring).

    ``input_action`` / ``output_action`` default to what the group implies:
    ``sign`` flips inputs and outputs, the others leave them fixed.
    """
    spec = spec.strip()
    name, _, arg = spec.partition(":")
    name = name.lower()
    for label, value, allowed in (("input", input_action, INPUT_ACTIONS), ("output", output_action, OUTPUT_ACTIONS)):
        if value is not None and value.partition(":")[0] not in allowed:
            raise InputError(f"--{label}-action {value!r} must be one of {', '.join(allowed)} "
                             "(so2 also takes rotate:K)")

    if name == "sign":
        if arg:
            raise InputError(f"--group sign takes no argument; got {spec!r}")
        signs = np.array([1.0, -1.0])
        hidden = Action(n_state, perm=np.tile(np.arange(n_state), (2, 1)), sign=np.repeat(signs[:, None], n_state, 1))
        return Group(spec, "Z_2 (sign flip)", False, hidden,
                     _side_action(input_action or "sign", "input", n_inputs, 2, sign_elements=signs),
                     _side_action(output_action or "sign", "output", n_outputs, 2, sign_elements=signs),
                     ("identity", "sign flip"))

    if name == "cyclic":
        try:
            shift = int(arg) if arg else 1
        except ValueError as e:
            raise InputError(f"--group cyclic:SHIFT needs an integer shift; got {arg!r}") from e
        if n_state == 0 or shift % n_state == 0:
            raise InputError(f"--group cyclic:{shift} is the identity on {n_state} units; give a shift not divisible by N")
        order = n_state // math.gcd(n_state, shift % n_state)
        hidden = _shift_action(n_state, shift, order)
        return Group(spec, f"Z_{order} (cyclic shift by {shift})", False, hidden,
                     _side_action(input_action or "trivial", "input", n_inputs, order, shift=shift, n_state=n_state),
                     _side_action(output_action or "trivial", "output", n_outputs, order, shift=shift, n_state=n_state),
                     tuple(f"shift {g * shift}" for g in range(order)))

    if name == "so2":
        try:
            freqs = [int(k) for k in arg.split(",")] if arg else [1]
        except ValueError as e:
            raise InputError(f"--group so2:k1,k2,... needs integer frequencies; got {arg!r}") from e
        A = _rotation_generator(n_state, freqs)

        def side(kind: str, what: str, n: int) -> Action:
            if kind == "trivial" or n == 0:
                return Action(n, dense=np.zeros((1, n, n)))
            kind, _, start = kind.partition(":")
            if kind == "rotate":
                try:
                    k0 = int(start) if start else 0
                except ValueError as e:
                    raise InputError(f"--{what}-action rotate:K needs an integer first channel K; got {start!r}") from e
                if start and not 0 <= k0 <= n - 2:
                    raise InputError(f"--{what}-action rotate:{k0} needs 0 <= K <= {n - 2} for {n} {what}s")
                if not start and n % 2:
                    raise InputError(f"--{what}-action rotate needs an even number of {what}s; the model has {n} "
                                     f"(rotate:K rotates the pairs from channel K on)")
                M = np.zeros((n, n))
                M[k0:, k0:] = _rotation_generator(n - k0, [freqs[0]] * ((n - k0) // 2))
                return Action(n, dense=M[None])
            raise InputError(f"--{what}-action {kind!r} does not apply to so2 (use trivial, rotate or rotate:K)")

        label = "SO(2)" + (f" with frequencies {','.join(map(str, freqs))}" if arg else "")
        return Group(spec, label, True, Action(n_state, dense=A[None]),
                     side(input_action or "trivial", "input", n_inputs),
                     side(output_action or "trivial", "output", n_outputs), ("rotation generator",))

    if name == "perm":
        path = Path(arg)
        arrays = _read_arrays(path)
        hp = _signed_perm(arrays, "", n_state, path)
        if hp is None:
            raise InputError("a perm: file needs an array 'perm' (and optionally 'sign')", path=path)
        perms, signs = _cyclic_powers(*hp)
        order = perms.shape[0]

        def side(prefix: str, n: int) -> Action:
            sp = _signed_perm(arrays, prefix, n, path)
            if sp is None:
                return _identity(n, order)
            p, s = _cyclic_powers(*sp)
            reps = -(-order // p.shape[0])
            return Action(n, perm=np.tile(p, (reps, 1))[:order], sign=np.tile(s, (reps, 1))[:order])

        return Group(spec, f"Z_{order} (signed permutation from {path.name})", False,
                     Action(n_state, perm=perms, sign=signs), side("input_", n_inputs), side("output_", n_outputs),
                     tuple(f"g^{g}" for g in range(order)))

    if name == "file":
        path = Path(arg)
        arrays = _read_arrays(path)
        if "generators" in arrays:
            Ah = np.asarray(arrays["generators"], dtype=np.float64)
            Ah = Ah[None] if Ah.ndim == 2 else Ah
            k = Ah.shape[0]
            hidden = _dense_action(arrays, "generators", k, n_state, path)
            return Group(spec, f"Lie group of dimension {k} from {path.name}", True, hidden,
                         _dense_action(arrays, "input_generators", k, n_inputs, path),
                         _dense_action(arrays, "output_generators", k, n_outputs, path),
                         tuple(f"A_{i}" for i in range(k)))
        if "hidden" in arrays:
            H = np.asarray(arrays["hidden"], dtype=np.float64)
            G = 1 if H.ndim == 2 else H.shape[0]
            return Group(spec, f"finite group of {G} elements from {path.name}", False,
                         _dense_action(arrays, "hidden", G, n_state, path),
                         _dense_action(arrays, "inputs", G, n_inputs, path),
                         _dense_action(arrays, "outputs", G, n_outputs, path),
                         tuple(f"g_{i}" for i in range(G)))
        raise InputError("a file: group needs 'hidden' [G,N,N] (finite) or 'generators' [k,N,N] (continuous)",
                         path=path)

    raise InputError(f"--group {spec!r}: unknown group; use sign, cyclic[:SHIFT], so2[:k1,...], perm:FILE "
                     "or file:FILE.npz")
