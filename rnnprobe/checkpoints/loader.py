"""``load_checkpoint``: a file, its sidecar and the user's options -> a canonical :class:`Model`.

Order of precedence for every setting: command-line options, then the
sidecar, then the file's own metadata, then the layout's documented default
(each default that is an assumption leaves a note on the model).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from rnnprobe.cells import ElmanCell, GRUCell, LSTMCell, UserCell, get_nonlinearity, import_cell_class
from rnnprobe.checkpoints.conv import build_conv, check_conv_shapes, conv_layout_for_key, conv_settings, find_conv
from rnnprobe.checkpoints.hdf5_format import read_hdf5, read_keras
from rnnprobe.checkpoints.layouts import Layout, Part, Readout, find_layouts, generic_layout, part_shape, \
    readout_candidates
from rnnprobe.checkpoints.numpy_format import read_npz
from rnnprobe.checkpoints.options import LoadOptions
from rnnprobe.checkpoints.safety import EXTENSIONS, check_file, one_line, sniff
from rnnprobe.checkpoints.safetensors_format import read_safetensors
from rnnprobe.checkpoints.sidecar import SIDECAR_FIELDS, _parse, find_sidecar
from rnnprobe.checkpoints.store import Store, normalize
from rnnprobe.checkpoints.torch_format import read_torch
from rnnprobe.errors import CheckpointError, InputError
from rnnprobe.model import Model

__all__ = ["load_checkpoint", "read_store"]

# where training code keeps hyper-parameters inside a checkpoint's metadata
_META_CONTAINERS = ("", "hyper_parameters.", "hparams.", "hyperparameters.", "config.", "args.", "params.",
                    "metadata.")
_SETTINGS = ("alpha", "tau", "dt", "eps", "nonlinearity", "form", "task", "readout", "cell", "trained_dtype",
             "lattice")


def read_store(path: Path, options: LoadOptions) -> tuple[Store, list[str]]:
    """Check, sniff and parse ``path`` into a :class:`Store` (and notes about the format)."""
    size = check_file(path, options.max_bytes)
    fmt = sniff(path, size)
    notes = []
    expected = EXTENSIONS.get(path.suffix.lower())
    if expected is not None and expected != fmt:
        notes.append(f"the content is {fmt} although the extension {path.suffix} suggests {expected}")
    if fmt == "torch":
        store = read_torch(path, trust_pickle=options.trust_pickle)
    elif fmt == "safetensors":
        store = read_safetensors(path, size)
    elif fmt == "npz":
        store = read_npz(path, options.max_bytes)
    elif fmt == "keras":
        store = read_keras(path, options.max_bytes)
    else:
        store = read_hdf5(path)
    return store, notes + store.notes


# ---- settings ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Settings:
    values: dict
    sources: dict

    def get(self, name):
        return self.values.get(name)


def _file_value(meta: dict, name: str):
    for c in _META_CONTAINERS:
        if c + name in meta and meta[c + name] is not None:
            return meta[c + name], c + name
    return None, None


def _coerce(name: str, value, where: str, path: Path):
    types, what = SIDECAR_FIELDS[name]
    if float in types:
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise CheckpointError(f"{where} {name}={value!r} is not a number; it must be {what}", path=path) from None
        if isinstance(value, bool) or not math.isfinite(v):
            raise CheckpointError(f"{where} {name}={value!r}; it must be {what}", path=path)
        return v
    return str(value)


def _settings(options: LoadOptions, sidecar: dict, side_name: str | None, store: Store) -> tuple[_Settings, list[str]]:
    values: dict = {}
    sources: dict = {}
    from_side, from_file = [], []
    for name in _SETTINGS:
        opt = getattr(options, name, None) if name not in ("tau", "task", "trained_dtype") else None
        if opt is not None:
            values[name], sources[name] = opt, "option"
            continue
        if sidecar.get(name) is not None:
            values[name], sources[name] = _coerce(name, sidecar[name], f"sidecar {side_name}:", store.path), "sidecar"
            from_side.append(f"{name}={values[name]}")
            continue
        v, key = _file_value(store.metadata, name)
        if v is not None:
            values[name], sources[name] = _coerce(name, v, f"file metadata '{key}':", store.path), "file"
            from_file.append(f"{name}={values[name]} ({key})")
    notes = []
    if from_side:
        notes.append(f"from the sidecar {side_name}: {', '.join(from_side)}")
    if from_file:
        notes.append(f"from the file's metadata: {', '.join(from_file)}")
    keys = dict(sidecar.get("keys") or {})
    keys.update(options.keys)
    values["keys"] = keys
    return _Settings(values, sources), notes


# ---- layout choice and overrides ----------------------------------------------------------------------------
def _describe_keys(store: Store, limit: int = 8) -> str:
    keys = store.model_keys() or list(store.entries)
    shown = ", ".join(f"{k} {list(store.entries[k].shape)}" for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _choose_layout(store: Store, keys: dict, options: LoadOptions, lattice=None) -> Layout:
    layouts = find_layouts(store, options.layer, options.direction)
    layouts += [c for c in find_conv(store, lattice) if all(c.anchor != lay.anchor for lay in layouts)]
    if "W_hh" in keys:
        anchor = store.find(keys["W_hh"], "--key W_hh")
        for lay in layouts:
            if lay.anchor == anchor:
                return lay
        conv = conv_layout_for_key(store, anchor, lattice)
        if conv is not None:
            return conv
        if len(store.entries[anchor].shape) != 2:
            raise store.error(f"--key W_hh={keys['W_hh']}: '{anchor}' has shape {list(store.entries[anchor].shape)}; "
                              "W_hh must be a matrix [N, N]")
        return generic_layout(store, anchor)
    if not layouts:
        raise store.error(
            "no recurrent weights found (looked for nn.RNN/GRU/LSTM weight_hh_l0, RNNCell weight_hh, CTRNN "
            f"h2h.weight, Keras recurrent_kernel, W_hh/W_rec/J, recurrent nn.Conv weights, kernel_hh / "
            f"generator_hh / bipartite_hh); the file has: {_describe_keys(store)}; name the "
            "recurrent matrix with --key W_hh=KEY, or load a custom model with --cell"
        )
    if len(layouts) > 1:
        listed = "; ".join(f"{lay.name} (--key W_hh={lay.anchor})" for lay in layouts[:6])
        raise store.error(f"holds several recurrent networks: {listed}; choose one with --key W_hh=KEY")
    return layouts[0]


def _apply_overrides(store: Store, layout: Layout, keys: dict) -> tuple[Layout, Readout | None, bool]:
    """The layout with ``--key`` overrides applied; returns it, a forced readout (if any) and whether one was forced."""
    parts = dict(layout.parts)
    gated = layout.kind != "elman"
    combine = "T" if layout.row_vectors else ""
    for name in ("W_uh", "b"):
        if name not in keys:
            continue
        key = store.find(keys[name], f"--key {name}")
        if gated and name == "b":
            raise store.error(f"--key b: a {layout.kind.upper()} has two biases (bias_ih, bias_hh) read from the "
                              "file's own keys; --key b applies to Elman cells")
        target = "weight_ih" if gated else name
        parts[target] = Part((key,), combine if name == "W_uh" else "")
    forced = None
    force = "W_r" in keys or "b_r" in keys
    if "b_r" in keys and "W_r" not in keys:
        raise store.error("--key b_r given without --key W_r; name the readout weight too")
    if "W_r" in keys:
        w = store.find(keys["W_r"], "--key W_r")
        b = store.find(keys["b_r"], "--key b_r") if "b_r" in keys else None
        forced = Readout(name=w, W=Part((w,), combine), b=Part((b,)) if b else None)
    used = {k for p in parts.values() for k in p.keys}
    own = set(layout.own) | used
    return dataclasses.replace(layout, parts=parts, own=own), forced, force


def _check_shapes(store: Store, layout: Layout, readout: Readout | None, max_hidden: int) -> None:
    """Shapes of every part, from the file's declarations, before any tensor is read."""
    anchor = "W_hh" if layout.kind == "elman" else "weight_hh"
    w = layout.parts[anchor]
    shape = part_shape(store, w)
    if shape and shape[-1] > max_hidden:
        raise store.error(
            f"{anchor} (file key '{w.label()}', shape {list(shape)}) has N={shape[-1]} hidden units, over the "
            f"--max-hidden limit of {max_hidden}; raise --max-hidden if this is intended"
        )
    G = {"elman": 1, "gru": 3, "lstm": 4}[layout.kind]
    if len(shape) != 2 or shape[0] != G * shape[1] or shape[1] == 0:
        want = "[N, N] (square)" if G == 1 else f"[{G}*N, N]"
        raise store.error(f"{anchor} (file key '{w.label()}') has shape {list(shape)}; it must be {want}: the "
                          f"recurrent matrix of {layout.name}; choose another with --key W_hh=KEY")
    N = shape[1]
    for name, part in layout.parts.items():
        if name == anchor:
            continue
        for k in part.keys:
            s = part_shape(store, Part((k,), part.combine))
            if name in ("W_uh", "weight_ih"):
                ok = (len(s) == 2 and s[0] == G * N) or (len(s) == 1 and s[0] == G * N and G == 1)
                want = f"[{'' if G == 1 else f'{G}*'}N={G * N}, d_in]"
            elif part.combine == "psych" and k != part.keys[0]:
                ok = s == part_shape(store, Part((part.keys[0],), part.combine))
                want = f"the shape of '{part.keys[0]}'"
            else:
                ok = s == (G * N,)
                want = f"[{G * N}]"
            if not ok:
                raise store.error(
                    f"{name} (file key '{k}') has shape {list(s)} but {anchor} (file key '{w.label()}') is "
                    f"{list(shape)}: {name} must be {want}; the file is inconsistent, or choose the tensor with "
                    f"--key {'W_uh' if name in ('W_uh', 'weight_ih') else 'b'}=KEY"
                )
    if readout is not None:
        s = part_shape(store, readout.W)
        if len(s) != 2 or s[1] != N:
            raise store.error(
                f"readout W_r (file key '{readout.W.keys[0]}') has shape {list(s)}; it must be [d_out, N={N}] "
                "(after transposing row-vector files); choose the readout with --readout KEY or --key W_r=KEY"
            )
        if readout.b is not None and part_shape(store, readout.b) != (s[0],):
            raise store.error(
                f"readout bias b_r (file key '{readout.b.keys[0]}') has shape "
                f"{list(part_shape(store, readout.b))}; it must be [d_out={s[0]}]"
            )


def _fetch(store: Store, name: str, part: Part, options: LoadOptions, notes: list[str]) -> torch.Tensor:
    def get(key: str, label: str = name) -> torch.Tensor:
        return store.tensor(key, label, dtype=options.dtype, device=options.device, max_bytes=options.max_bytes)

    ts = [get(k) for k in part.keys]
    c = part.combine
    if c == "sum":
        return sum(ts[1:], ts[0])
    if c == "T":
        return ts[0].T.contiguous() if ts[0].dim() == 2 else ts[0]
    if c == "keras_gru_w":
        z, r, h = ts[0].T.chunk(3, dim=0)
        return torch.cat([r, z, h], dim=0).contiguous()
    if c in ("keras_gru_b0", "keras_gru_b1"):
        z, r, h = ts[0][0 if c.endswith("0") else 1].chunk(3)
        return torch.cat([r, z, h])
    if c == "psych":
        W = ts[0] * ts[1] if len(ts) > 1 else ts[0]
        flag_key = part.extra.get("dale_abs") or part.extra.get("dale")
        if flag_key:
            flag = get(flag_key, "Dale_rec")
            if bool((torch.diagonal(flag) < 0).any()):
                W = W.abs()
                if part.extra.get("dale"):
                    D = get(part.extra["dale"], "Dale matrix")
                    W = W @ D
                notes.append(f"{name}: Dale's law applied as in PsychRNN (|W| times the sign matrix)")
        return W
    return ts[0]


def _resolve_elman(st: _Settings, layout: Layout, notes: list[str], path: Path) -> dict:
    def pick(name: str):
        v = st.get(name)
        if v is not None:
            return v
        default = layout.defaults.get(name)
        if default is not None:
            notes.append(default[1])
            return default[0]
        return None

    nonlinearity = pick("nonlinearity") or "tanh"
    try:
        nonlinearity = get_nonlinearity(nonlinearity).name
    except InputError as e:
        raise CheckpointError(f"{e.message} ({st.sources.get('nonlinearity', 'layout')})", path=path) from None
    form = pick("form") or "leaky"
    if form == "residual":
        eps = st.get("eps") if st.get("eps") is not None else st.get("alpha")
        if eps is None:
            raise CheckpointError("--form residual needs the Euler step: pass --eps (or eps in the sidecar)", path=path)
        alpha = float(eps)
    else:
        alpha = st.get("alpha")
        if alpha is None and st.get("dt") is not None and st.get("tau") is not None:
            alpha = float(st.get("dt")) / float(st.get("tau"))
            notes.append(f"alpha = dt/tau = {st.get('dt')}/{st.get('tau')} = {alpha:g}")
        if alpha is None:
            alpha = pick("alpha")
        alpha = 1.0 if alpha is None else float(alpha)
    return {"nonlinearity": nonlinearity, "form": form, "alpha": alpha}


def _refuse_elman_options(options: LoadOptions, st: _Settings, layout: Layout, notes: list[str], path: Path):
    for name in ("alpha", "nonlinearity", "form", "eps"):
        if getattr(options, name) is not None:
            raise CheckpointError(
                f"--{name} applies to Elman/leaky cells, but the file holds a {layout.kind.upper()} ({layout.name}); "
                f"drop --{name}",
                path=path,
            )
        if st.sources.get(name) in ("sidecar", "file"):
            notes.append(f"{name}={st.get(name)} ignored: a {layout.kind.upper()} has fixed gate nonlinearities")


# ---- user cells -------------------------------------------------------------------------------------------------
def _cell_spec(options: LoadOptions, sidecar: dict, side_name: str | None,
               store: Store) -> tuple[str | None, list[str]]:
    notes = []
    named, source = None, None
    if isinstance(sidecar.get("cell"), str) and ":" in sidecar["cell"]:
        named, source = sidecar["cell"], f"the sidecar {side_name}"
    else:
        v, key = _file_value(store.metadata, "cell")
        if isinstance(v, str) and ":" in v:
            named, source = v, f"the file's metadata ('{key}')"
    if options.cell:
        if named and named != options.cell:
            notes.append(f"--cell {options.cell} used; {source} names {named}")
        return options.cell, notes
    if named is None:
        return None, notes
    if named.split(":", 1)[0].split(".", 1)[0] == "rnnprobe":
        notes.append(f"cell class {named} named by {source} (rnnprobe's own code)")
        return named, notes
    raise CheckpointError(
        f"{source} names the cell class {named}; rnnprobe never imports code because a file asks it to: if you "
        f"trust that class, pass --cell {named}",
        path=store.path,
    )


def _match_state_dict(store: Store, wanted: dict[str, torch.Size], spec: str) -> dict[str, str]:
    """module key -> file key, for the prefix under which the file holds the module's whole state dict."""
    norm = {normalize(k): k for k in store.model_keys()}
    counts: dict[str, int] = {}
    for nk in norm:
        for m in wanted:
            if nk == m:
                counts[""] = counts.get("", 0) + 1
            elif nk.endswith("." + m):
                p = nk[: -len(m)]
                counts[p] = counts.get(p, 0) + 1
    best = max(sorted(counts), key=lambda p: (counts[p], -len(p))) if counts else ""
    matched = {m: norm[best + m] for m in wanted if best + m in norm}
    missing = [m for m in wanted if m not in matched]
    unexpected = [nk[len(best):] for nk in norm if nk.startswith(best) and nk[len(best):] not in wanted]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {', '.join(missing[:6])}")
        if unexpected:
            parts.append(f"unexpected keys {', '.join(unexpected[:6])}")
        raise store.error(
            f"--cell {spec}: the file's state dict{' under ' + repr(best) if best else ''} does not match the class "
            f"({'; '.join(parts)}); check cell_kwargs in the sidecar or the class"
        )
    return matched


def _load_user_cell(store: Store, spec: str, sidecar: dict, options: LoadOptions, notes: list[str]):
    cls = import_cell_class(spec)
    kwargs = sidecar.get("cell_kwargs") or {}
    try:
        module = cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's constructor: report it on one line
        raise InputError(f"--cell {spec}: {cls.__name__}(**{kwargs}) failed: {type(e).__name__}: {one_line(e)}; "
                         "check cell_kwargs in the sidecar", path=store.path) from None
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"--cell {spec}: the class did not build a torch.nn.Module", path=store.path)
    wanted = {k: v.shape for k, v in module.state_dict().items()}
    matched = _match_state_dict(store, wanted, spec)
    for m, k in matched.items():
        have = store.entries[k].shape
        if tuple(have) != tuple(wanted[m]):
            raise store.error(f"--cell {spec}: '{k}' has shape {list(have)} but the class's {m} is "
                              f"{list(wanted[m])}; check cell_kwargs in the sidecar")
    cell = UserCell(module, spec=spec, kwargs=kwargs, dtype=options.dtype, device=options.device)
    if cell.n_state > options.max_hidden:
        raise store.error(f"the user cell has {cell.n_state} state units, over the --max-hidden limit of "
                          f"{options.max_hidden}; raise --max-hidden if this is intended")
    sd = {m: store.tensor(k, m, dtype=options.dtype, device=options.device, max_bytes=options.max_bytes)
          for m, k in matched.items()}
    try:
        cell.module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise store.error(f"--cell {spec}: load_state_dict failed: {one_line(e)}") from None
    notes.append(f"user cell {spec} with cell_kwargs {kwargs}: the file's state dict loaded strictly")
    return cell, matched


# ---- the loader ---------------------------------------------------------------------------------------------
def _options(options: LoadOptions | None, overrides: dict) -> LoadOptions:
    options = options if options is not None else LoadOptions()
    if not overrides:
        return options
    fields = {f.name for f in dataclasses.fields(LoadOptions)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InputError(f"unknown load option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    return dataclasses.replace(options, **overrides)


def load_checkpoint(path, options: LoadOptions | None = None, **overrides) -> Model:
    """Read a checkpoint into the canonical :class:`~rnnprobe.model.Model`, never running code from the file.

    Arguments:
        path: the checkpoint (torch, safetensors, npz, HDF5/Keras; the format is sniffed from the content).
        options: :class:`LoadOptions`; ``overrides`` replace single fields (``load_checkpoint(p, alpha=0.2)``).

    Returns the model on ``options.dtype``/``options.device``, with ``keys``
    (canonical name -> file key), ``ignored`` keys and ``notes`` saying what was
    inferred or assumed.

    Raises :class:`~rnnprobe.errors.CheckpointError` (exit 2; ``UnsafeCheckpointError``
    for refused pickles) with one line naming the file, the key and the fix.
    """
    options = _options(options, overrides)
    path = Path(path).expanduser()
    side_path, side_notes = find_sidecar(path) if path.is_file() else (None, [])
    store, notes = read_store(path, options)
    sidecar = _parse(side_path) if side_path else {}
    side_name = side_path.name if side_path else None
    notes = notes + side_notes
    st, setting_notes = _settings(options, sidecar, side_name, store)
    notes += setting_notes

    spec, cell_notes = _cell_spec(options, sidecar, side_name, store)
    notes += cell_notes
    if spec is not None:
        cell, keys = _load_user_cell(store, spec, sidecar, options, notes)
        used = set(keys.values())
        trained = store.entries[next(iter(keys.values()))].dtype if keys else "float64"
        return _model(store, cell, keys, used, notes, st, sidecar, trained)

    lattice = st.get("lattice")
    if lattice is not None:
        from rnnprobe.operators import parse_lattice

        try:
            lattice = parse_lattice(lattice, what=f"lattice ({st.sources.get('lattice')})")
        except InputError as e:
            raise CheckpointError(e.message, path=store.path) from None
    layout = _choose_layout(store, st.get("keys"), options, lattice)
    notes += layout.notes
    layout, forced, force = _apply_overrides(store, layout, st.get("keys"))
    if force:
        readout = forced
        notes.append("readout from --key W_r" + (" and --key b_r" if forced and forced.b else " (b_r = 0)"))
    else:
        readout, rnotes = readout_candidates(store, layout, st.get("readout"))
        notes += rnotes
    if readout is not None and readout.activation not in (None, "linear"):
        notes.append(f"the readout's activation {readout.activation} is not applied: rnnprobe's readout is linear")
    if layout.conv is not None:
        check_conv_shapes(store, layout, readout, options.max_hidden)
        raw = {name: [store.tensor(k, name, dtype=options.dtype, device=options.device, max_bytes=options.max_bytes)
                      for k in part.keys] for name, part in layout.parts.items()}
        W_r = _fetch(store, "W_r", readout.W, options, notes) if readout else None
        conv = build_conv(store, layout, raw, conv_settings(sidecar, store.path), W_r, notes, dtype=options.dtype,
                          device=options.device)
        fetched, W_r = {k: conv[k] for k in ("W_hh", "W_uh", "b")}, conv["W_r"]
    else:
        _check_shapes(store, layout, readout, options.max_hidden)
        fetched = {name: _fetch(store, name, part, options, notes) for name, part in layout.parts.items()}
        W_r = _fetch(store, "W_r", readout.W, options, notes) if readout else None
    b_r = _fetch(store, "b_r", readout.b, options, notes) if readout and readout.b else None
    keys = {name: part.label() for name, part in layout.parts.items()}
    if readout is not None:
        keys["W_r"] = readout.W.keys[0]
        if readout.b is not None:
            keys["b_r"] = readout.b.keys[0]
    try:
        if layout.kind == "elman":
            kw = _resolve_elman(st, layout, notes, store.path)
            cell = ElmanCell(fetched["W_hh"], fetched.get("W_uh"), fetched.get("b"), W_r, b_r,
                             dtype=options.dtype, device=options.device, **kw)
        else:
            _refuse_elman_options(options, st, layout, notes, store.path)
            cls = GRUCell if layout.kind == "gru" else LSTMCell
            cell = cls(fetched.get("weight_ih"), fetched["weight_hh"], fetched.get("bias_ih"), fetched.get("bias_hh"),
                       W_r, b_r, dtype=options.dtype, device=options.device)
    except CheckpointError:
        raise
    except InputError as e:
        raise CheckpointError(f"{e.message} (keys: {', '.join(f'{k}={v}' for k, v in keys.items())})",
                              path=store.path) from None
    used = {k for p in layout.parts.values() for k in p.keys} | {x for p in layout.parts.values()
                                                                 for x in p.extra.values() if x}
    if readout is not None:
        used |= set(readout.W.keys) | {x for x in readout.W.extra.values() if x}
        used |= set(readout.b.keys) if readout.b else set()
    trained = store.entries[layout.anchor].dtype
    return _model(store, cell, keys, used, notes, st, sidecar, trained)


def _model(store: Store, cell, keys: dict, used: set, notes: list[str], st: _Settings, sidecar: dict,
           trained: str) -> Model:
    ignored = [k for k in store.model_keys() if k not in used]
    bookkeeping = [k for k in store.entries if store.is_bookkeeping(k)]
    if bookkeeping:
        notes.append(f"skipped {len(bookkeeping)} tensors of training state (optimizer, scheduler, ...)")
    consumed = set(SIDECAR_FIELDS) | {"keys"}
    metadata = {k: v for k, v in store.metadata.items() if k not in _SETTINGS}
    metadata.update({k: v for k, v in sidecar.items() if k not in consumed})
    if isinstance(sidecar.get("cell"), str) and ":" not in sidecar["cell"]:
        metadata["cell"] = sidecar["cell"]
    dt = st.get("dt")
    return Model(
        cell=cell, source=store.path, format=store.format, keys=keys, ignored=ignored,
        notes=list(dict.fromkeys(notes)), dt=None if dt is None else float(dt),
        task=st.get("task"), trained_dtype=str(st.get("trained_dtype") or trained), metadata=metadata,
    )
