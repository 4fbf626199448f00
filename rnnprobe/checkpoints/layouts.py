"""Which file keys are which part of the canonical model: layout inference.

Each ``find_*`` function recognises one family of layouts from key names and
shapes alone (no tensor is read) and returns :class:`Layout` candidates:

* torch ``nn.RNN``/``nn.GRU``/``nn.LSTM`` (``P.weight_hh_l{K}[_reverse]``) under any prefix,
* torch ``nn.RNNCell``/``GRUCell``/``LSTMCell`` (``P.weight_hh``, ``P.weight_ih``),
* the neurogym / Yang-lab CTRNN (``P.h2h.weight``, ``P.input2h.weight``),
* Keras ``SimpleRNN``/``GRU``/``LSTM`` weights: Keras 2 (``.../recurrent_kernel:0``) and
  Keras 3 (``layers/<name>/cell/vars/0,1,2``), row-vector convention, transposed on load,
* generic names (``W_hh``/``W_rec``/``J``, ``W_uh``/``W_in``/``W_ih``, ``b``/``b_rec``/``b_h``,
  ``W_r``/``W_out``, ``b_r``/``b_out``) at any depth, PsychRNN's ``.npz`` among them.

A :class:`Part` names the file keys of one canonical tensor and how they
combine (a sum of torch's two biases, a transpose, a gate reordering).
Readout candidates are found by :func:`readout_candidates`.
"""

from __future__ import annotations

import dataclasses
import re

from rnnprobe.checkpoints.store import Store, leaf, normalize, parent
from rnnprobe.errors import CheckpointError

__all__ = ["Part", "Layout", "Readout", "find_layouts", "readout_candidates", "generic_layout", "part_shape",
           "READOUT_NAMES"]

# Names that mark a Linear as the readout when several read N features.
READOUT_NAMES = ("readout", "fc", "linear", "out", "output", "decoder", "head", "w_out", "fc_out", "out_layer",
                 "output_layer", "linear_out", "readout_layer", "out_proj", "output_proj", "classifier", "w_r")

GENERIC_HH = ("W_hh", "W_rec", "J", "w_hh", "w_rec", "Whh", "Wrec", "W_rr")
GENERIC_UH = ("W_uh", "W_in", "W_ih", "w_uh", "w_in", "w_ih", "Win", "Wuh", "W_u")
GENERIC_B = ("b", "b_rec", "b_h", "b_hh", "bias", "b_r_rec")
GENERIC_WR = ("W_r", "W_out", "w_r", "w_out", "Wout", "W_o", "readout")
GENERIC_BR = ("b_r", "b_out", "b_o", "bout")


@dataclasses.dataclass
class Part:
    """One canonical tensor: file keys and how they combine.

    ``combine``: ``""`` (one key as stored), ``sum`` (the keys added: torch's
    two biases), ``T`` (transposed: row-vector files), ``keras_gru_w``
    (transposed, gates z,r,h -> r,z,n), ``keras_gru_b0`` / ``keras_gru_b1``
    (row 0 / 1 of Keras' [2, 3N] GRU bias, reordered), ``psych`` (PsychRNN: the
    weight times its connectivity mask; with Dale's law |W| times the sign matrix), ``conv_bias``
    (a convolution's per-channel bias plus its input's bias, combined by :mod:`rnnprobe.checkpoints.conv`).
    """

    keys: tuple[str, ...]
    combine: str = ""
    extra: dict = dataclasses.field(default_factory=dict)

    def label(self) -> str:
        if self.combine in ("sum", "conv_bias"):
            return " + ".join(self.keys)
        return self.keys[0]


@dataclasses.dataclass
class Readout:
    """A readout: ``W`` ([d_out, N] after ``combine``) and an optional bias."""

    name: str
    W: Part
    b: Part | None
    activation: str | None = None


@dataclasses.dataclass
class Layout:
    """A recurrent network recognised in a file.

    ``kind`` is ``elman``, ``gru`` or ``lstm`` (``family`` ``conv`` for convolutional
    recurrences, with ``conv`` describing them); ``parts`` are canonical tensors:
    ``W_hh``, ``W_uh``, ``b`` for Elman cells, ``weight_ih``, ``weight_hh``,
    ``bias_ih``, ``bias_hh`` for gated ones. ``readout`` is ``None`` to search
    for one, or ``False`` when no single-cell readout can exist (an inner layer,
    one direction of a bidirectional RNN).
    """

    family: str
    kind: str
    anchor: str
    name: str
    N: int
    parts: dict[str, Part]
    own: set[str]
    readout_in: int
    root: str = ""
    readout: Readout | None | bool = None
    row_vectors: bool = False
    defaults: dict = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    conv: dict | None = None
    """For convolutional recurrences (:mod:`rnnprobe.checkpoints.conv`): type, lattice, channels."""


def part_shape(store: Store, part: Part) -> tuple[int, ...]:
    """The shape of a part after ``combine``, from the file's declared shapes."""
    shape = store.entries[part.keys[0]].shape
    if part.combine in ("T", "keras_gru_w"):
        return tuple(reversed(shape))
    if part.combine in ("keras_gru_b0", "keras_gru_b1"):
        return shape[1:]
    return shape


def _container(prefix: str) -> str:
    """The container one level above a dotted prefix: ``a.b.rnn.`` -> ``a.b.``; ``rnn.`` -> ``''``."""
    parts = prefix.rstrip(".").split(".")[:-1]
    return ".".join(parts) + "." if parts else ""


def _gate_kind(rows: int, cols: int) -> str:
    if cols > 0 and rows == 3 * cols:
        return "gru"
    if cols > 0 and rows == 4 * cols:
        return "lstm"
    return "elman"


# ---- torch nn.RNN / GRU / LSTM -----------------------------------------------------------
_TORCH_RNN = re.compile(r"^(?P<p>(?:.*\.)?)weight_hh_l(?P<l>\d+)(?P<r>_reverse)?$")
_TORCH_PARAM = re.compile(r"^(?:weight|bias)_(?:ih|hh|hr)_l\d+(?:_reverse)?$")


def find_torch_rnn(store: Store, layer: int, direction: str) -> list[Layout]:
    groups: dict[str, dict] = {}
    for k in store.model_keys():
        m = _TORCH_RNN.match(normalize(k))
        if m:
            g = groups.setdefault(m.group("p"), {"layers": set(), "reverse": False})
            g["layers"].add(int(m.group("l")))
            g["reverse"] |= bool(m.group("r"))
    out = []
    for p, g in groups.items():
        name = p.rstrip(".") or "(top level)"
        layers = sorted(g["layers"])
        if layer not in g["layers"]:
            raise store.error(f"--layer {layer}: the RNN '{name}' has layers {layers}; choose one of them")
        if direction == "reverse" and not g["reverse"]:
            raise store.error(f"--direction reverse: the RNN '{name}' is not bidirectional (no *_reverse keys)")
        sfx = f"_l{layer}" + ("_reverse" if direction == "reverse" else "")
        key = lambda stem, sfx=sfx, p=p: store.by_norm(f"{p}{stem}{sfx}")  # noqa: E731
        w_hh = key("weight_hh")
        rows, cols = (store.entries[w_hh].shape + (0, 0))[:2]
        kind = _gate_kind(rows, cols) if len(store.entries[w_hh].shape) == 2 else "elman"
        if store.by_norm(f"{p}weight_hr_l0") is not None:
            raise store.error(
                f"'{name}' is an LSTM with proj_size (weight_hr_l0): its projected hidden state is not supported; "
                "re-train without proj_size or wrap it as a user cell (--cell)"
            )
        own = {k for k in store.model_keys()
               if normalize(k).startswith(p) and _TORCH_PARAM.match(normalize(k)[len(p):])}
        N = cols
        notes = []
        last = max(layers)
        n_layers = len(layers)
        module = {"elman": "nn.RNN", "gru": "nn.GRU", "lstm": "nn.LSTM"}[kind]
        if n_layers > 1:
            others = ", ".join(f"--layer {x}" for x in layers if x != layer)
            notes.append(f"layer {layer} of {n_layers} of '{name}'; others exist: {others}")
        if layer > 0:
            notes.append(f"layer {layer}'s inputs are layer {layer - 1}'s hidden states, not the network's inputs")
        bidir = g["reverse"]
        if bidir:
            other = "reverse" if direction == "forward" else "forward"
            notes.append(f"direction {direction} of a bidirectional RNN; the other: --direction {other}")
        w_ih, b_ih, b_hh = key("weight_ih"), key("bias_ih"), key("bias_hh")
        if kind == "elman":
            parts = {"W_hh": Part((w_hh,)), "W_uh": Part((w_ih,)) if w_ih else None}
            biases = tuple(x for x in (b_ih, b_hh) if x)
            if biases:
                parts["b"] = Part(biases, "sum")
            if len(biases) == 2:
                notes.append(f"b = {b_ih} + {b_hh} (torch keeps two biases; summed)")
            defaults = {"nonlinearity": ("tanh", "nn.RNN files do not store the nonlinearity: assumed tanh (torch's "
                                                 "default); set it with --nonlinearity or the sidecar")}
        else:
            parts = {"weight_hh": Part((w_hh,)), "weight_ih": Part((w_ih,)) if w_ih else None,
                     "bias_ih": Part((b_ih,)) if b_ih else None, "bias_hh": Part((b_hh,)) if b_hh else None}
            defaults = {}
        readout: bool | None = None
        if layer != last:
            readout = False
            notes.append(f"no readout: a readout reads the last layer ({last}), not layer {layer}")
        elif bidir:
            readout = False
            notes.append("no readout: a readout of a bidirectional RNN reads both directions (2N features), "
                         "which no single-direction cell has")
        out.append(Layout(family="torch-rnn", kind=kind, anchor=w_hh, name=f"{module} '{name}'", N=N,
                          parts={k: v for k, v in parts.items() if v is not None}, own=own, readout_in=N,
                          root=_container(p), readout=readout, defaults=defaults, notes=notes))
    return out


# ---- torch nn.RNNCell / GRUCell / LSTMCell ----------------------------------------------------
def find_torch_cell(store: Store) -> list[Layout]:
    out = []
    for k in store.model_keys():
        n = normalize(k)
        if not (n == "weight_hh" or n.endswith(".weight_hh")):
            continue
        p = n[: -len("weight_hh")]
        w_ih = store.by_norm(p + "weight_ih")
        if w_ih is None:
            continue
        shape = store.entries[k].shape
        kind = _gate_kind(*shape) if len(shape) == 2 else "elman"
        b_ih, b_hh = store.by_norm(p + "bias_ih"), store.by_norm(p + "bias_hh")
        own = {x for x in (k, w_ih, b_ih, b_hh) if x}
        notes = []
        module = {"elman": "nn.RNNCell", "gru": "nn.GRUCell", "lstm": "nn.LSTMCell"}[kind]
        if kind == "elman":
            biases = tuple(x for x in (b_ih, b_hh) if x)
            parts = {"W_hh": Part((k,)), "W_uh": Part((w_ih,))}
            if biases:
                parts["b"] = Part(biases, "sum")
            if len(biases) == 2:
                notes.append(f"b = {b_ih} + {b_hh} (torch keeps two biases; summed)")
            defaults = {"nonlinearity": ("tanh", "nn.RNNCell files do not store the nonlinearity: assumed tanh "
                                                 "(torch's default); set it with --nonlinearity or the sidecar")}
        else:
            parts = {"weight_hh": Part((k,)), "weight_ih": Part((w_ih,))}
            if b_ih:
                parts["bias_ih"] = Part((b_ih,))
            if b_hh:
                parts["bias_hh"] = Part((b_hh,))
            defaults = {}
        out.append(Layout(family="torch-cell", kind=kind, anchor=k, name=f"{module} '{p.rstrip('.') or '(top level)'}'",
                          N=shape[-1] if shape else 0, parts=parts, own=own, readout_in=shape[-1] if shape else 0,
                          root=_container(p), defaults=defaults, notes=notes))
    return out


# ---- neurogym / Yang-lab CTRNN ------------------------------------------------------------------
def find_ctrnn(store: Store) -> list[Layout]:
    out = []
    for k in store.model_keys():
        n = normalize(k)
        if not (n == "h2h.weight" or n.endswith(".h2h.weight")):
            continue
        p = n[: -len("h2h.weight")]
        w_ih = store.by_norm(p + "input2h.weight")
        b_ih, b_hh = store.by_norm(p + "input2h.bias"), store.by_norm(p + "h2h.bias")
        shape = store.entries[k].shape
        parts = {"W_hh": Part((k,))}
        if w_ih:
            parts["W_uh"] = Part((w_ih,))
        biases = tuple(x for x in (b_ih, b_hh) if x)
        notes = []
        if biases:
            parts["b"] = Part(biases, "sum")
        if len(biases) == 2:
            notes.append(f"b = {b_ih} + {b_hh} (the two nn.Linear biases; summed)")
        defaults = {
            "nonlinearity": ("relu", "CTRNN (input2h/h2h) files do not store the nonlinearity: assumed relu as in the "
                                     "neurogym / Yang-lab CTRNN; set it with --nonlinearity or the sidecar"),
            "alpha": (1.0, "CTRNN files do not store alpha = dt/tau: assumed 1 (no leak); pass --alpha, or alpha "
                           "(or dt and tau) in the sidecar"),
        }
        N = shape[-1] if shape else 0
        out.append(Layout(family="ctrnn", kind="elman", anchor=k, name=f"CTRNN '{p.rstrip('.') or '(top level)'}'",
                          N=N, parts=parts, own={x for x in (k, w_ih, b_ih, b_hh) if x}, readout_in=N,
                          root=_container(p), defaults=defaults, notes=notes))
    return out


# ---- Keras ---------------------------------------------------------------------------------------------
def _snake(name: str) -> str:
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras_layers(config: dict | None) -> tuple[dict[str, dict], dict[str, dict]]:
    """Layer configs by layer name (Keras 2 h5 paths) and by snake-case class path (Keras 3 ``layers/<x>``)."""
    by_name: dict[str, dict] = {}
    by_path: dict[str, dict] = {}
    if not isinstance(config, dict):
        return by_name, by_path
    inner = config.get("config", config)
    layers = inner.get("layers") if isinstance(inner, dict) else inner
    if not isinstance(layers, list):
        return by_name, by_path
    counts: dict[str, int] = {}
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        cls = layer.get("class_name")
        cfg = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        if not isinstance(cls, str):
            continue
        info = {"class_name": cls, **{k: cfg.get(k) for k in ("activation", "recurrent_activation", "reset_after",
                                                                 "use_bias", "name")}}
        if cls in ("TimeDistributed", "Bidirectional") and isinstance(cfg.get("layer"), dict):
            sub = cfg["layer"]
            subcfg = sub.get("config") if isinstance(sub.get("config"), dict) else {}
            info["wrapped"] = sub.get("class_name")
            info["activation"] = subcfg.get("activation")
        if isinstance(cfg.get("name"), str):
            by_name[cfg["name"]] = info
        snake = _snake(cls)
        i = counts.get(snake, -1) + 1
        counts[snake] = i
        by_path[snake if i == 0 else f"{snake}_{i}"] = info
    return by_name, by_path


def _keras_layer_info(store: Store, group: str) -> tuple[str, dict]:
    """The layer name owning a weight group and its config (empty when the file has none)."""
    by_name, by_path = _keras_layers(store.config)
    comps = group.split(".")
    if "layers" in comps:  # Keras 3: layers.<path>[.cell].vars
        i = comps.index("layers")
        name = comps[i + 1] if i + 1 < len(comps) else group
        return name, by_path.get(name, {})
    if comps and comps[0] == "model_weights":
        comps = comps[1:]
    name = comps[0] if comps else group
    return name, by_name.get(name, {})


def _keras_defaults(kind: str, info: dict, layer: str, store: Store) -> tuple[dict, list[str]]:
    notes = []
    act, rec = info.get("activation"), info.get("recurrent_activation")
    if kind == "elman":
        if isinstance(act, str):
            return {"nonlinearity": (act, f"nonlinearity {act} from the Keras layer config of '{layer}'")}, notes
        return {"nonlinearity": ("tanh", f"no Keras config for '{layer}': assumed SimpleRNN's default tanh; set it "
                                         "with --nonlinearity")}, notes
    if not info:
        notes.append(f"no Keras config for '{layer}': assumed the default activations (tanh, sigmoid gates)")
        return {}, notes
    if act not in (None, "tanh") or rec not in (None, "sigmoid"):
        raise store.error(
            f"Keras {kind.upper()} '{layer}' uses activation={act!r}, recurrent_activation={rec!r}; only tanh with "
            "sigmoid gates maps onto torch's gate equations (rnnprobe's GRU/LSTM cells): use a user cell (--cell)"
        )
    return {}, notes


def find_keras(store: Store) -> list[Layout]:
    out = []
    for k in store.model_keys():
        n = normalize(k)
        g = parent(n)
        if leaf(n) == "recurrent_kernel":  # Keras 2: <group>/kernel:0, recurrent_kernel:0, bias:0
            w_uh, b = store.by_norm(g + ".kernel" if g else "kernel"), store.by_norm(g + ".bias" if g else "bias")
        elif leaf(n) == "1" and g.endswith("cell.vars") and store.by_norm(g + ".0") is not None:  # Keras 3
            w_uh, b = store.by_norm(g + ".0"), store.by_norm(g + ".2")
        else:
            continue
        shape = store.entries[k].shape
        if len(shape) != 2:
            raise store.error(f"Keras recurrent_kernel '{k}' has shape {list(shape)}; expected [N, G*N]")
        N = shape[0]
        kind = _gate_kind(shape[1], shape[0])
        layer, info = _keras_layer_info(store, g)
        defaults, notes = _keras_defaults(kind, info, layer, store)
        notes.append("Keras weights are row-vector ([in, out]): transposed to rnnprobe's column convention")
        own = {x for x in (k, w_uh, b) if x}
        if kind == "elman":
            parts = {"W_hh": Part((k,), "T")}
            if w_uh:
                parts["W_uh"] = Part((w_uh,), "T")
            if b:
                parts["b"] = Part((b,))
        elif kind == "lstm":
            parts = {"weight_hh": Part((k,), "T")}
            if w_uh:
                parts["weight_ih"] = Part((w_uh,), "T")
            if b:
                parts["bias_ih"] = Part((b,))
            notes.append("Keras LSTM gates (i, f, c, o) are torch's (i, f, g, o); its single bias is bias_ih")
        else:
            bshape = store.entries[b].shape if b else None
            if bshape is not None and len(bshape) != 2 or info.get("reset_after") is False:
                raise store.error(
                    f"Keras GRU '{layer}' has reset_after=False (bias shape {list(bshape or [])}): it resets before "
                    "the recurrent product, unlike torch's GRU; only reset_after=True (Keras' default) is supported"
                )
            parts = {"weight_hh": Part((k,), "keras_gru_w")}
            if w_uh:
                parts["weight_ih"] = Part((w_uh,), "keras_gru_w")
            if b:
                parts["bias_ih"] = Part((b,), "keras_gru_b0")
                parts["bias_hh"] = Part((b,), "keras_gru_b1")
            notes.append("Keras GRU (reset_after=True): gates z, r, h reordered to torch's r, z, n")
        cls = info.get("class_name") or {"elman": "SimpleRNN", "gru": "GRU", "lstm": "LSTM"}[kind]
        out.append(Layout(family="keras", kind=kind, anchor=k, name=f"Keras {cls} '{layer}'", N=N, parts=parts,
                          own=own, readout_in=N, row_vectors=True, defaults=defaults, notes=notes))
    return out


# ---- generic names and PsychRNN ----------------------------------------------------------------------------
def _sibling(store: Store, group: str, names: tuple[str, ...]) -> str | None:
    for nm in names:
        hit = store.by_norm(f"{group}.{nm}" if group else nm)
        if hit is not None:
            return hit
    return None


def generic_layout(store: Store, anchor: str, family: str = "generic") -> Layout:
    """A layout around a recurrent matrix at ``anchor`` with siblings found by generic names."""
    g = parent(anchor)
    shape = store.entries[anchor].shape
    N = shape[-1] if shape else 0
    w_uh = _sibling(store, g, GENERIC_UH)
    b = _sibling(store, g, GENERIC_B)
    notes: list[str] = []
    psych = family == "psychrnn"
    if psych:
        conn_rec = _sibling(store, g, ("rec_connectivity",))
        conn_in = _sibling(store, g, ("input_connectivity",))
        dale_rec = _sibling(store, g, ("Dale_rec",))
        parts = {"W_hh": Part(tuple(x for x in (anchor, conn_rec) if x), "psych", {"dale": dale_rec})}
        if w_uh:
            parts["W_uh"] = Part(tuple(x for x in (w_uh, conn_in) if x), "psych", {"dale_abs": dale_rec})
        defaults = {
            "form": ("rate-outside", "PsychRNN layout (W_rec, b_rec): rate-outside form h' = (1-a) h + a (W_rec "
                                     "phi(h) + W_in u + b_rec)"),
            "nonlinearity": ("relu", "PsychRNN files do not store the transfer function: assumed relu (PsychRNN's "
                                     "default); set it with --nonlinearity"),
            "alpha": (1.0, "PsychRNN files do not store alpha = dt/tau: assumed 1; pass --alpha, or alpha (or dt and "
                           "tau) in the sidecar"),
        }
        if conn_rec or conn_in:
            notes.append("connectivity masks applied: W_rec * rec_connectivity, W_in * input_connectivity")
    else:
        parts = {"W_hh": Part((anchor,))}
        if w_uh:
            parts["W_uh"] = Part((w_uh,))
        defaults = {
            "nonlinearity": ("tanh", "the file does not store the nonlinearity: assumed tanh; set it with "
                                     "--nonlinearity or the sidecar"),
            "alpha": (1.0, "the file does not store alpha: assumed 1 (no leak); pass --alpha or put it in the sidecar"),
        }
    if b:
        parts["b"] = Part((b,))
    own = {x for p in parts.values() for x in p.keys}
    own |= {x for p in parts.values() for x in p.extra.values() if x}
    readout = None
    w_r = _sibling(store, g, GENERIC_WR)
    if w_r is not None and len(store.entries[w_r].shape) == 2:
        b_r = _sibling(store, g, GENERIC_BR)
        if psych:
            conn_out = _sibling(store, g, ("output_connectivity",))
            dale_out = _sibling(store, g, ("Dale_out",))
            W = Part(tuple(x for x in (w_r, conn_out) if x), "psych", {"dale": dale_out, "dale_abs": dale_rec})
            notes.append("PsychRNN reads out W_out phi(h) + b_out; rnnprobe's readout is linear in h "
                         "(y = W_r h + b_r), so outputs computed from the states differ from PsychRNN's")
        else:
            W = Part((w_r,))
        readout = Readout(name=leaf(w_r), W=W, b=Part((b_r,)) if b_r else None)
        own |= {x for x in (*W.keys, b_r) if x} | {x for x in W.extra.values() if x}
    name = "PsychRNN weights" if psych else f"generic weights '{g or '(top level)'}'"
    return Layout(family=family, kind="elman", anchor=anchor, name=name, N=N, parts=parts, own=own, readout_in=N,
                  root=g + "." if g else "", readout=readout, defaults=defaults, notes=notes)


def find_generic(store: Store) -> list[Layout]:
    out = []
    for k in store.model_keys():
        lf = leaf(k)
        if lf not in GENERIC_HH or len(store.entries[k].shape) != 2:
            continue
        g = parent(k)
        psych = lf == "W_rec" and _sibling(store, g, ("b_rec", "Dale_rec", "rec_connectivity")) is not None
        out.append(generic_layout(store, k, "psychrnn" if psych else "generic"))
    return out


def find_layouts(store: Store, layer: int, direction: str) -> list[Layout]:
    """Every recurrent network recognised in ``store`` (see the module docstring)."""
    found: list[Layout] = []
    for finder in (lambda: find_torch_rnn(store, layer, direction), lambda: find_torch_cell(store),
                   lambda: find_ctrnn(store), lambda: find_keras(store), lambda: find_generic(store)):
        for lay in finder():
            if all(lay.anchor != f.anchor for f in found):
                found.append(lay)
    return found


# ---- readouts ------------------------------------------------------------------------------------------------
def _linear_like(store: Store, layout: Layout) -> list[tuple[str, str, str | None, int]]:
    """(name, weight key, bias key, in-features) of every Linear/Dense-like weight outside the recurrent module."""
    out = []
    for k in store.model_keys():
        if k in layout.own:
            continue
        n = normalize(k)
        shape = store.entries[k].shape
        if len(shape) != 2:
            continue
        if layout.row_vectors:
            g = parent(n)
            if leaf(n) == "kernel" and store.by_norm(g + ".recurrent_kernel") is None:
                name, bias = g, store.by_norm(g + ".bias")
            elif leaf(n) == "0" and g.endswith(".vars") and not g.endswith("cell.vars"):
                name, bias = g[: -len(".vars")], store.by_norm(g + ".1")
            else:
                continue
            out.append((name, k, bias, shape[0]))
            continue
        if n == "weight" or n.endswith(".weight"):
            q = n[: -len("weight")].rstrip(".")
            if "embed" in q.rsplit(".", 1)[-1].lower():
                continue
            bias = store.by_norm(q + ".bias" if q else "bias")
            out.append((q or "(top level)", k, bias, shape[1]))
        elif leaf(n) in GENERIC_WR:
            g = parent(n)
            out.append((n, k, _sibling(store, g, GENERIC_BR), shape[1]))
    return out


def _readout_of(store: Store, layout: Layout, cand: tuple[str, str, str | None, int]) -> Readout:
    name, w, b, _ = cand
    activation = None
    if layout.row_vectors:
        _, info = _keras_layer_info(store, parent(normalize(w)))
        act = info.get("activation")
        activation = act if isinstance(act, str) else None
    return Readout(name=name, W=Part((w,), "T" if layout.row_vectors else ""), b=Part((b,)) if b else None,
                   activation=activation)


def readout_candidates(store: Store, layout: Layout, choice: str | None) -> tuple[Readout | None, list[str]]:
    """The readout of ``layout`` and notes saying how it was chosen.

    ``choice`` (``--readout``/sidecar) names a Linear by prefix or key, or ``none``.
    Without a choice: the single Linear-like weight with N in-features; among
    several, the single one named like a readout (``readout``, ``fc``, ``out``,
    ...); otherwise refuse, listing the candidates.
    """
    notes: list[str] = []
    if choice is not None and choice.strip().lower() == "none":
        return None, ["no readout (--readout none)"]
    if layout.readout is False:
        if choice is not None:
            raise store.error(f"--readout {choice}: {layout.name} layer/direction chosen has no readout of its own")
        return None, notes
    all_lin = _linear_like(store, layout)
    if choice is not None:
        c = normalize(choice)
        hits = [x for x in all_lin if normalize(x[0]) == c or normalize(x[1]) == c]
        if not hits:
            hits = [x for x in all_lin if normalize(x[0]).endswith("." + c) or normalize(x[1]).endswith("." + c)]
        if len(hits) != 1:
            listed = ", ".join(f"{x[0]} ({x[3]} in)" for x in all_lin[:8]) or "none"
            what = "matches several" if hits else "matches no"
            raise store.error(f"--readout {choice} {what} Linear/Dense weights in the file; candidates: {listed}")
        if hits[0][3] != layout.readout_in:
            raise store.error(
                f"--readout {choice}: '{hits[0][1]}' reads {hits[0][3]} features but the hidden state has "
                f"N={layout.readout_in}; choose a readout with N inputs"
            )
        return _readout_of(store, layout, hits[0]), [f"readout '{hits[0][0]}' chosen with --readout"]
    if isinstance(layout.readout, Readout):
        return layout.readout, notes
    fit = [x for x in all_lin if x[3] == layout.readout_in]
    # prefer readouts next to the recurrent module: its container first, then each level up
    scope = layout.root
    while scope:
        inside = [x for x in fit if normalize(x[1]).startswith(scope)]
        if inside:
            fit = inside
            break
        scope = _container(scope)
    if not fit:
        return None, ["no readout found (no Linear/Dense weight reads N features); give one with --readout KEY "
                      "or --key W_r=..."]
    if len(fit) == 1:
        return _readout_of(store, layout, fit[0]), [f"readout '{fit[0][0]}': the only Linear reading N features"]
    named = [x for x in fit if normalize(x[0]).rsplit(".", 1)[-1].lower() in READOUT_NAMES]
    listed = ", ".join(x[0] for x in fit[:8])
    if len(named) == 1:
        return _readout_of(store, layout, named[0]), [
            f"readout '{named[0][0]}' chosen by its name among Linear layers reading N features ({listed}); "
            "choose another with --readout KEY"
        ]
    raise CheckpointError(
        f"several Linear layers read the N={layout.readout_in} hidden units ({listed}); choose the readout with "
        "--readout KEY (or --readout none)",
        path=store.path,
    )
