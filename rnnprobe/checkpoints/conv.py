"""Convolutional recurrences in checkpoint files: recognising them and building their operator.

Three kinds of file describe a recurrent convolution (see :mod:`rnnprobe.operators`
for the lattice layout and the kernel convention):

* a torch ``nn.Conv1d`` / ``nn.Conv2d`` recurrence in a state dict:
  ``P.weight [C, C, *k]`` (and ``P.bias [C]``) under a module named like a
  recurrence (``rec``, ``recurrent``, ``h2h``, ``hh``, ``conv_hh``, ...; or
  any key given with ``--key W_hh=KEY``). The state dict does not say the
  lattice it runs on: ``--lattice 64x64`` (or ``lattice`` in the sidecar)
  is required. Nor does it say the padding: ``padding_mode='circular'`` and
  'same' padding are assumed (noted) unless the sidecar's ``conv`` object says
  ``{"padding_mode": "zeros", "padding": [1, 1], "dilation": 1}``. The input
  is a ``Linear`` writing the N = C * prod(L) units (found by shape), and the
  readout a ``Linear`` reading them.
* a raw recurrent kernel (npz, safetensors, HDF5, torch): ``kernel_hh``
  (also ``K_hh``, ``W_hh_kernel``), shape ``[*L]`` or ``[C, C, *L]``. A kernel
  as large as the lattice holds circular offsets (offset 0 at index 0, the
  paper's layout; the lattice is then its shape); a smaller one is a stencil
  centred at ``k // 2`` on the ``--lattice``. Siblings by the generic names
  (``W_uh``/``W_in``, ``b``, ``W_r``/``W_out``, ``b_r``); ``b`` may be per
  channel ``[C]``.
* its generator: ``generator_hh`` (also ``A_hh``, ``W_hh_generator``):
  ``W_hh = exp_conv(G)``, the convolutional exponential computed at load time
  in the analysis dtype (so an antisymmetric generator gives a W_hh orthogonal
  to rounding, whatever precision the file was trained in).
* Magnasco's bipartite architecture: ``bipartite_hh`` (also ``K_bipartite``,
  ``S_hh``): a symmetric kernel S coupling an X and a P copy of the lattice,
  ``W_hh = [[cos S, sin S], [-sin S, cos S]]`` (N = 2 * C * prod(L), X first).
  Inputs, bias and readout given for the X units only ([N/2, ...]) are padded
  with zeros for P, as in the paper (the input drives X).
"""

from __future__ import annotations

import math

import torch

from rnnprobe.checkpoints.layouts import GENERIC_B, GENERIC_BR, GENERIC_UH, GENERIC_WR, Layout, Part, Readout, \
    _container, _sibling
from rnnprobe.checkpoints.store import Store, leaf, normalize, parent
from rnnprobe.errors import CheckpointError
from rnnprobe.operators import CircularConvOperator, ZeroPaddedConvOperator, format_lattice, parse_lattice

__all__ = ["find_conv", "conv_layout_for_key", "check_conv_shapes", "build_conv", "CONV_HH", "RAW_KEYS",
           "conv_settings"]

CONV_HH = ("rec", "recurrent", "recurrence", "h2h", "hh", "conv_hh", "rec_conv", "recurrent_conv", "conv_rec",
           "w_hh", "hidden2hidden", "recur")
"""Module names that mark a torch Conv weight as the recurrence."""

RAW_KEYS = {
    "kernel": ("kernel_hh", "K_hh", "W_hh_kernel"),
    "generator": ("generator_hh", "A_hh", "W_hh_generator"),
    "bipartite": ("bipartite_hh", "K_bipartite", "S_hh"),
}
"""Leaf names of raw recurrent kernels, by what they define."""

_INPUT_NAMES = ("input2h", "inp", "input", "i2h", "in_proj", "input_proj", "encoder", "w_in", "in")


def conv_settings(sidecar: dict, path) -> dict:
    """The sidecar's ``conv`` object, checked: ``padding_mode``, ``padding``, ``dilation``."""
    conv = sidecar.get("conv") or {}
    if not isinstance(conv, dict):
        raise CheckpointError(f"sidecar field 'conv' is {conv!r}; it must be an object such as "
                              '{"padding_mode": "circular", "padding": 1}', path=path)
    mode = conv.get("padding_mode", "circular")
    if mode not in ("circular", "zeros"):
        raise CheckpointError(f"sidecar conv.padding_mode={mode!r}: rnnprobe reads 'circular' or 'zeros' "
                              "recurrent convolutions", path=path)
    for name in ("padding", "dilation"):
        v = conv.get(name)
        vals = v if isinstance(v, list) else [v]
        if v is not None and not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in vals):
            raise CheckpointError(f"sidecar conv.{name}={v!r}: give a non-negative integer or a list of them",
                                  path=path)
    return {"padding_mode": mode, "padding": conv.get("padding"), "dilation": conv.get("dilation") or 1,
            "given": "padding_mode" in conv}


def _conv_shape_ok(shape) -> bool:
    return len(shape) in (3, 4) and shape[0] == shape[1] and shape[0] > 0


def _raw_kind(store: Store, key: str) -> str | None:
    lf = leaf(key)
    for kind, names in RAW_KEYS.items():
        if lf in names:
            return kind
    return None


def _spatial(shape) -> tuple[int, tuple[int, ...]]:
    """(channels, spatial shape) of a raw kernel ``[*L]`` / ``[C, C, *L]``."""
    if len(shape) in (1, 2):
        return 1, tuple(shape)
    return shape[0], tuple(shape[2:])


def _raw_layout(store: Store, key: str, kind: str, lattice: tuple[int, ...] | None) -> Layout:
    shape = store.entries[key].shape
    if len(shape) not in (1, 2) and not _conv_shape_ok(shape):
        raise store.error(f"recurrent kernel '{key}' has shape {list(shape)}; it must be [*L] (one channel) or "
                          "[C, C, *L] on a 1-D or 2-D lattice")
    C, space = _spatial(shape)
    notes = []
    if lattice is None:
        lattice = space
        notes.append(f"lattice {format_lattice(lattice)}: the kernel's own shape (circular offsets, offset 0 at "
                     "index 0)")
    elif len(lattice) != len(space):
        raise store.error(f"--lattice {format_lattice(lattice)} is {len(lattice)}-D but the kernel '{key}' "
                          f"{list(shape)} is {len(space)}-D; give a {len(space)}-D lattice")
    elif tuple(lattice) != space:
        if any(k > n for k, n in zip(space, lattice)):
            raise store.error(f"the kernel '{key}' {list(shape)} is larger than the lattice "
                              f"{format_lattice(lattice)}; give the lattice it was trained on (--lattice)")
        notes.append(f"kernel '{key}' {'x'.join(map(str, space))} is a stencil centred at k//2 on the "
                     f"{format_lattice(lattice)} lattice")
    g = parent(key)
    sites = math.prod(lattice)
    factor = 2 if kind == "bipartite" else 1
    N = factor * C * sites
    parts = {"W_hh": Part((key,))}
    w_uh = _sibling(store, g, GENERIC_UH)
    b = _sibling(store, g, GENERIC_B)
    if w_uh:
        parts["W_uh"] = Part((w_uh,))
    if b:
        parts["b"] = Part((b,))
    readout = None
    w_r = _sibling(store, g, GENERIC_WR)
    if w_r is not None and len(store.entries[w_r].shape) == 2:
        b_r = _sibling(store, g, GENERIC_BR)
        readout = Readout(name=leaf(w_r), W=Part((w_r,)), b=Part((b_r,)) if b_r else None)
    what = {"kernel": "recurrent kernel", "generator": "generator of W_hh = exp_conv(G)",
            "bipartite": "bipartite X/P symmetric kernel"}[kind]
    own = {x for p in parts.values() for x in p.keys} | ({w_r} if readout else set())
    if readout is not None and readout.b is not None:
        own |= set(readout.b.keys)
    defaults = {
        "nonlinearity": ("tanh", "the file does not store the nonlinearity: assumed tanh; set it with "
                                 "--nonlinearity or the sidecar"),
        "alpha": (1.0, "the file does not store alpha: assumed 1 (no leak); pass --alpha or put it in the sidecar"),
    }
    return Layout(family="conv", kind="elman", anchor=key, name=f"{what} '{key}'", N=N, parts=parts, own=own,
                  readout_in=N, root=g + "." if g else "", readout=readout, defaults=defaults, notes=notes,
                  conv={"type": kind, "lattice": tuple(lattice), "channels": C, "factor": factor})


def _input_linear(store: Store, rec_prefix: str, N: int, exclude: set) -> tuple[str | None, str | None, list[str]]:
    """The Linear writing the N units: (weight key, bias key, notes)."""
    from rnnprobe.checkpoints.layouts import READOUT_NAMES

    cands = []
    for k in store.model_keys():
        n = normalize(k)
        if k in exclude or n.startswith(rec_prefix):
            continue
        shape = store.entries[k].shape
        named_readout = parent(n).rsplit(".", 1)[-1].lower() in READOUT_NAMES
        if (n == "weight" or n.endswith(".weight")) and len(shape) == 2 and shape[0] == N and not named_readout:
            cands.append(k)
    if not cands:
        return None, None, ["no input Linear writes the N units: the model has no inputs (or name it with "
                            "--key W_uh=KEY)"]
    if len(cands) > 1:
        named = [k for k in cands if parent(k).rsplit(".", 1)[-1] in _INPUT_NAMES]
        if len(named) != 1:
            raise store.error(f"several Linear weights write the N={N} units ({', '.join(cands[:6])}); name the "
                              "input with --key W_uh=KEY")
        cands = named
    w = cands[0]
    q = normalize(w)[: -len("weight")]
    return w, store.by_norm(q + "bias"), [f"input Linear '{w}' (the only one writing N={N} units)"]


def _torch_layout(store: Store, key: str, lattice: tuple[int, ...] | None) -> Layout:
    shape = store.entries[key].shape
    if not _conv_shape_ok(shape):
        raise store.error(f"the recurrent convolution '{key}' has shape {list(shape)}; a recurrent nn.Conv1d/Conv2d "
                          "weight must be [C, C, *k] (as many output as input channels)")
    nd = len(shape) - 2
    module = "nn.Conv1d" if nd == 1 else "nn.Conv2d"
    if lattice is None:
        raise store.error(f"the recurrent {module} weight '{key}' {list(shape)} does not say which lattice it runs "
                          f"on: pass --lattice {'HxW' if nd == 2 else 'L'} (e.g. --lattice "
                          f"{'64x64' if nd == 2 else '128'}) or put \"lattice\" in the sidecar")
    if len(lattice) != nd:
        raise store.error(f"--lattice {format_lattice(lattice)} is {len(lattice)}-D but '{key}' is a {module} "
                          f"weight ({nd}-D); give a {nd}-D lattice")
    C = shape[0]
    N = C * math.prod(lattice)
    n = normalize(key)
    prefix = n[: -len("weight")]
    b_rec = store.by_norm(prefix + "bias")
    own = {x for x in (key, b_rec) if x}
    w_in, b_in, notes = _input_linear(store, prefix, N, own)
    parts = {"W_hh": Part((key,))}
    if w_in:
        parts["W_uh"] = Part((w_in,))
    biases = tuple(x for x in (b_rec, b_in) if x)
    if biases:
        parts["b"] = Part(biases, "conv_bias")
    own |= {x for x in (w_in, b_in) if x}
    defaults = {
        "nonlinearity": ("tanh", f"{module} recurrences do not store the nonlinearity: assumed tanh; set it with "
                                 "--nonlinearity or the sidecar"),
        "alpha": (1.0, "the file does not store alpha: assumed 1 (no leak); pass --alpha or put it in the sidecar"),
    }
    return Layout(family="conv", kind="elman", anchor=key, name=f"recurrent {module} '{prefix.rstrip('.')}'", N=N,
                  parts=parts, own=own, readout_in=N, root=_container(prefix), defaults=defaults, notes=notes,
                  conv={"type": "torch", "lattice": tuple(lattice), "channels": C, "factor": 1})


def conv_layout_for_key(store: Store, key: str, lattice) -> Layout | None:
    """The conv layout around a key the user named (``--key W_hh=KEY``), or None if it is a matrix."""
    shape = store.entries[key].shape
    if len(shape) == 2 and _raw_kind(store, key) is None and (lattice is None or tuple(shape) != tuple(lattice)):
        return None
    kind = _raw_kind(store, key)
    if kind is None and leaf(key) == "weight" and len(shape) in (3, 4):
        return _torch_layout(store, key, lattice)
    return _raw_layout(store, key, kind or "kernel", lattice)


def find_conv(store: Store, lattice=None) -> list[Layout]:
    """Every convolutional recurrence recognised in ``store`` (see the module docstring)."""
    lattice = None if lattice is None else parse_lattice(lattice)
    out = []
    for k in store.model_keys():
        kind = _raw_kind(store, k)
        if kind is not None:
            out.append(_raw_layout(store, k, kind, lattice))
            continue
        n = normalize(k)
        if leaf(n) != "weight" or not _conv_shape_ok(store.entries[k].shape):
            continue
        if parent(n).rsplit(".", 1)[-1].lower() in CONV_HH:
            out.append(_torch_layout(store, k, lattice))
    return out


def check_conv_shapes(store: Store, layout: Layout, readout: Readout | None, max_hidden: int) -> None:
    """Shapes of a conv layout's parts, and N against ``--max-hidden``, before any tensor is read."""
    c = layout.conv
    N = layout.N
    half = N // c["factor"]
    if N > max_hidden:
        raise store.error(
            f"the convolution '{layout.anchor}' on the {format_lattice(c['lattice'])} lattice with {c['channels']} "
            f"channel(s) has N={N} units, over the --max-hidden limit of {max_hidden}; raise --max-hidden (a "
            "convolution's products cost O(N log N), its dense form is never built at this size)"
        )
    widths = (N, half) if c["factor"] == 2 else (N,)
    for name, part in layout.parts.items():
        if name == "W_hh":
            continue
        for k in part.keys:
            s = store.entries[k].shape
            if name == "W_uh":
                ok = len(s) == 2 and s[0] in widths
                want = f"[N={N}, d_in]" + (f" or [N/2={half}, d_in] (X units only)" if c["factor"] == 2 else "")
            else:
                ok = len(s) == 1 and (s[0] in widths or s[0] == c["channels"])
                want = f"[N={N}] or one per channel [{c['channels']}]"
            if not ok:
                raise store.error(f"{name} (file key '{k}') has shape {list(s)}; for the convolution "
                                  f"'{layout.anchor}' it must be {want}; the file is inconsistent, or choose the "
                                  f"tensor with --key {name}=KEY")
    if readout is not None:
        s = store.entries[readout.W.keys[0]].shape
        if len(s) != 2 or s[1] not in widths:
            raise store.error(f"readout W_r (file key '{readout.W.keys[0]}') has shape {list(s)}; it must be "
                              f"[d_out, N={N}]" + (f" or [d_out, N/2={half}]" if c["factor"] == 2 else "")
                              + "; choose the readout with --readout KEY or --key W_r=KEY")


def _pad_rows(x: torch.Tensor | None, N: int) -> torch.Tensor | None:
    """X-only rows (bipartite) padded with zeros for the P units."""
    if x is None or x.shape[0] == N:
        return x
    return torch.cat([x, torch.zeros_like(x)], dim=0)


def build_conv(store: Store, layout: Layout, tensors: dict, settings: dict, W_r, notes: list[str], *,
               dtype: torch.dtype, device) -> dict:
    """The cell's W_hh operator and its W_uh, b, W_r from the fetched tensors of a conv layout.

    ``tensors``: part name -> list of tensors (in the part's key order);
    ``settings``: :func:`conv_settings`. Returns ``{"W_hh", "W_uh", "b", "W_r"}``.
    """
    from rnnprobe.numerics.conv import bipartite_generator, bipartite_kernel, conv_exp

    c = layout.conv
    lattice, C = c["lattice"], c["channels"]
    N = layout.N
    K = tensors["W_hh"][0]
    kind = c["type"]
    if kind == "torch":
        if settings["padding_mode"] == "zeros":
            op = ZeroPaddedConvOperator(K, lattice, settings["padding"], settings["dilation"])
            notes.append(f"zero-padded boundaries (sidecar conv.padding_mode): products by torch's convolution; "
                         "its spectrum needs the dense matrix")
        else:
            op = CircularConvOperator.from_conv(K, lattice, settings["padding"], settings["dilation"],
                                                construction=f"nn.Conv weight '{layout.anchor}'")
            if not settings["given"]:
                notes.append("padding_mode='circular' and 'same' padding assumed (state dicts do not store them); "
                             'give the sidecar a "conv" object to say otherwise')
    else:
        K4 = K if K.dim() in (3, 4) else K[None, None]
        if tuple(K4.shape[2:]) != tuple(lattice):
            from rnnprobe.operators import place_stencil

            K4 = place_stencil(K4, lattice)
        if kind == "kernel":
            op = CircularConvOperator(K4, lattice, construction=f"kernel '{layout.anchor}'")
        elif kind == "generator":
            op = CircularConvOperator(conv_exp(K4), lattice, generator=K4,
                                      construction=f"exp_conv of the generator '{layout.anchor}'")
            notes.append(f"W_hh = exp_conv(G) of the generator '{layout.anchor}', computed by FFT in "
                         f"{str(dtype).replace('torch.', '')}")
        else:
            op = CircularConvOperator(bipartite_kernel(K4), lattice, generator=bipartite_generator(K4),
                                      construction=f"bipartite X/P cos/sin of '{layout.anchor}'")
            notes.append(f"Magnasco's bipartite X/P architecture: W_hh = [[cos S, sin S], [-sin S, cos S]] of the "
                         f"symmetric kernel '{layout.anchor}' (X units first, then P); one nonlinearity for both")
    W_uh = tensors["W_uh"][0] if "W_uh" in tensors else None
    b = None
    for t in tensors.get("b", []):
        if t.shape[0] == C and t.shape[0] not in (N, N // c["factor"]):
            t = t.repeat_interleave(math.prod(lattice))  # one bias per channel, on every site
        t = _pad_rows(t, N)
        b = t if b is None else b + t
    if c["factor"] == 2:
        if W_uh is not None and W_uh.shape[0] != N:
            notes.append("inputs and bias drive the X units only (P padded with zeros)")
        W_uh = _pad_rows(W_uh, N)
        if W_r is not None and W_r.shape[1] != N:
            W_r = torch.cat([W_r, torch.zeros_like(W_r)], dim=1)
            notes.append("the readout reads the X units only")
    notes.append(f"W_hh is {op.describe()}")
    return {"W_hh": op, "W_uh": W_uh, "b": b, "W_r": W_r}

