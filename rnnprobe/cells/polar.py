"""An exactly SO(2)-equivariant recurrent cell for S^1 path integration (Mo 2026).

The construction of Mo ("Symmetry-Protected Lyapunov Neutral Modes in
Equivariant Recurrent Networks", 2026): the state holds a 2-vector
``z = (x, y)`` and ``m`` invariant channels ``c``. Everything the cell learns
is a function of rotation invariants only,

    q = (|z|^2, c, |v|^2, omega)          (v: the cue pair of the input),

and the update is, with ``J = [[0, -1], [1, 0]]`` and ``R(theta) = exp(theta J)``,

    f_z   = a(q) z + b(q) v + epsilon (x, -y)
    z'    = R(theta) (z + dt f_z),        theta = omega (1 + kappa(q))
    c'    = c + dt (tanh(d(q)) - c)
    y     = (p x - q_r y, q_r x + p y)    (an equivariant linear readout)

where ``(a, b, kappa, d) = head(tanh(layer(q)))`` is a one-hidden-layer MLP.
Rotating ``z`` and ``v`` by any angle leaves ``q`` unchanged and commutes with
``R(theta)``, so for ``epsilon = 0`` the map is exactly equivariant under SO(2)
acting on ``z`` (frequency 1), on the cue pair of the input, and on the output
pair, and trivially on ``c`` and ``omega``: whatever the weights are, the step
equivariance error is rounding alone. ``epsilon != 0`` adds the
symmetry-breaking term ``epsilon (x, -y)`` to the vector field (Mo's broken
variant): at zero input the phase relaxes towards 0 or pi at a rate of about
``2 epsilon dt`` per step, the pseudo-gap of the formerly neutral direction.

Inputs follow the ``s1:init=cue`` task (:func:`rnnprobe.tasks.s1`):
``u = (omega, cos phi_0, sin phi_0)``, the cue pair on at ``t = 0`` only.
Outputs are ``(cos phi_t, sin phi_t)``. The zero state is the fixed point of
the group, so a cell started at ``z = 0`` needs the cue to pick a phase.

Group specification for ``rnnprobe equivariance`` and ``rnnprobe lyapunov``:
``--group so2 --input-action rotate:1 --output-action rotate`` (the sample
sidecars carry it under ``symmetry``, so ``--group`` may be left out).

Use it as a user cell: ``--cell rnnprobe.cells.polar:PolarS1Cell`` (sidecars
of the shipped samples name it, with ``cell_kwargs``).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnprobe.cells.user import module_outputs

__all__ = ["PolarS1Cell", "SYMMETRY"]

SYMMETRY = {"group": "so2", "input_action": "rotate:1", "output_action": "rotate"}
"""The group this cell is equivariant under, as ``rnnprobe equivariance`` options."""


class PolarS1Cell(nn.Module):
    """Exactly SO(2)-equivariant S^1 path integrator (``epsilon = 0``) or its broken variant.

    Arguments:
        n_channels: invariant channels ``c`` (the state is ``[x, y, c]``, ``2 + n_channels``).
        n_mlp: width of the hidden layer of the invariant MLP.
        dt: Euler step of the radial / channel vector field (the rotation is exact).
        epsilon: strength of the symmetry-breaking term ``epsilon (x, -y)`` (0: exact).

    ``step(s, u)`` [B, 2 + m], [B, 3] -> [B, 2 + m]; ``readout(s)`` [..., 2 + m] -> [..., 2];
    ``forward(inputs [B, T, 3])`` -> outputs [B, T, 2] from the zero state.
    """

    n_inputs = 3
    n_outputs = 2

    def __init__(self, n_channels: int = 4, n_mlp: int = 16, dt: float = 1.0, epsilon: float = 0.0):
        super().__init__()
        if n_channels < 0 or n_mlp < 1 or not dt > 0:
            raise ValueError(f"PolarS1Cell needs n_channels >= 0, n_mlp >= 1 and dt > 0; got "
                             f"n_channels={n_channels}, n_mlp={n_mlp}, dt={dt}")
        self.n_channels = int(n_channels)
        self.n_mlp = int(n_mlp)
        self.n_state = 2 + self.n_channels
        self.dt = float(dt)
        self.epsilon = float(epsilon)
        # invariants q = (|z|^2, c, |v|^2, omega)
        self.layer = nn.Linear(3 + self.n_channels, self.n_mlp)
        # heads: radial rate a, cue gain b, angular gain kappa, channel drive d
        self.head = nn.Linear(self.n_mlp, 3 + self.n_channels)
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
            self.head.bias[1] = 1.0  # start by copying the cue into z
        # readout y = (p + i q) z, as complex multiplication
        self.readout_weight = nn.Parameter(torch.tensor([1.0, 0.0]))

    def step(self, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        x, y, c = s[..., 0], s[..., 1], s[..., 2:]
        omega, vx, vy = u[..., 0], u[..., 1], u[..., 2]
        q = torch.cat([(x * x + y * y)[..., None], c, (vx * vx + vy * vy)[..., None], omega[..., None]], dim=-1)
        out = self.head(torch.tanh(self.layer(q)))
        a, b, kappa, d = out[..., 0], out[..., 1], out[..., 2], out[..., 3:]
        dt = self.dt
        wx = x + dt * (a * x + b * vx + self.epsilon * x)
        wy = y + dt * (a * y + b * vy - self.epsilon * y)
        theta = omega * (1.0 + kappa)
        cos, sin = torch.cos(theta), torch.sin(theta)
        c_next = c + dt * (torch.tanh(d) - c)
        return torch.cat([(cos * wx - sin * wy)[..., None], (sin * wx + cos * wy)[..., None], c_next], dim=-1)

    def readout(self, s: torch.Tensor) -> torch.Tensor:
        p, q = self.readout_weight[0], self.readout_weight[1]
        x, y = s[..., 0], s[..., 1]
        return torch.stack([p * x - q * y, q * x + p * y], dim=-1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return module_outputs(self, inputs)

    def sidecar(self) -> dict:
        """What the state dict does not say: the class, its kwargs and its symmetry."""
        return {
            "architecture": "PolarS1Cell: SO(2)-equivariant polar cell (Mo 2026)"
                            + (f", broken by epsilon={self.epsilon:g}" if self.epsilon else ""),
            "cell": "rnnprobe.cells.polar:PolarS1Cell",
            "cell_kwargs": {"n_channels": self.n_channels, "n_mlp": self.n_mlp, "dt": self.dt,
                            "epsilon": self.epsilon},
            "n_hidden": self.n_state,
            "n_inputs": self.n_inputs,
            "n_outputs": self.n_outputs,
            "symmetry": dict(SYMMETRY),
            "init": "torch default (nn.Linear), heads scaled by 0.1",
        }
