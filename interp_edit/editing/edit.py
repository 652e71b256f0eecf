"""``Edit``: the one result of every editing method.

An edit holds weight deltas keyed by TransformerLens parameter name, each either low-rank
factors (``ΔW = left @ right``: ROME rank 1, MEMIT / AlphaEdit rank ≤ number of requests) or
sparse rows (``ΔW[rows] = values``: neuron-level editors, fine-tuning). Deltas of ``W_O``
([head, d_head, d_model]) are stored over the flattened [head·d_head, d_model] matrix.

- ``edit.apply(model)`` changes the weights in place and remembers the original tensors;
  ``edit.undo(model)`` puts them back bit for bit. Edits applied one after another form a
  stack on the model (kept on the model object itself, never in module state) and are undone
  in reverse order; ``with edit.applied(model):`` applies for a block.
- ``with edit.hooked(model):`` adds the deltas' effect with hooks (``input @ ΔW`` added to the
  output the weight writes to) and touches no weight.
- An edit may also carry activation hooks (``edit.hooks``: steering such as MEGA's, see
  :mod:`interp_edit.editing.hooks`) instead of or besides deltas: ``apply`` registers
  them on the model until ``undo`` (permanent TransformerLens hooks, so analyses' own hook
  contexts and ``reset_hooks()`` leave them), ``hooked`` adds them for a block, and saving
  keeps them.
- ``edit.save(path)`` / ``Edit.load(path)``: one safetensors file whose metadata holds the
  method, config, requests, base-model fingerprint and library version. Applying an edit to a
  model with another fingerprint raises :class:`EditApplicationError`.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp_edit.adapter import (
    add_persistent_hook,
    applied_edit_stack,
    delta_hooks,
    get_parameter,
    has_parameter,
    model_fingerprint,
    parameter_layer,
    remove_persistent_hook,
    weight_matrix_shape,
)
from interp_edit.adapter.params import APPLIED_EDITS_ATTR, fingerprint_matches, weight_checksum
from interp_edit.editing.hooks import hook_points
from interp_edit.errors import EditApplicationError, EditConfigError
from interp_edit.precision import add_delta_, all_finite
from interp_edit.statistics.provenance import thin_statistics_note

_STACK_ATTR = APPLIED_EDITS_ATTR
#: the content keys of the edits active through ``Edit.hooked`` on a model (kept on the model object)
_HOOKED_ATTR = "_interp_edit_hooked"


@dataclass(frozen=True)
class LowRankDelta:
    """``ΔW = left @ right`` over the parameter seen as a matrix [rows, cols]."""

    left: Float[Tensor, "rows rank"]
    right: Float[Tensor, "rank cols"]

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    def dense(self) -> Float[Tensor, "rows cols"]:
        return self.left @ self.right

    def through(self, inputs: Float[Tensor, "... rows"]) -> Float[Tensor, "... cols"]:
        """``inputs @ ΔW`` without forming ΔW."""
        return (inputs @ self.left.to(inputs.device, inputs.dtype)) @ self.right.to(inputs.device, inputs.dtype)

    def tensors(self) -> dict[str, Tensor]:
        return {"left": self.left, "right": self.right}


@dataclass(frozen=True)
class SparseRowDelta:
    """``ΔW[rows] = values``; the other rows are unchanged (e.g. chosen neurons of ``W_out``)."""

    rows: Int[Tensor, " n"]
    values: Float[Tensor, "n cols"]

    def __post_init__(self) -> None:
        if len(torch.unique(self.rows)) != len(self.rows):
            raise ValueError(f"SparseRowDelta rows must be distinct, got {self.rows.tolist()} (merge the values of repeated rows)")
        if self.values.shape[0] != len(self.rows):
            raise ValueError(f"SparseRowDelta has {len(self.rows)} rows but {self.values.shape[0]} value rows")

    @property
    def rank(self) -> int:
        return int(torch.linalg.matrix_rank(self.values.double()).item()) if len(self.rows) else 0

    def covers(self, n_rows: int) -> bool:
        """Whether the rows are all ``n_rows`` rows in order (fine-tuning changes every row of
        ``W_out``): then ``ΔW`` is ``values`` itself and is added without gathering rows."""
        return len(self.rows) == n_rows and torch.equal(self.rows.cpu(), torch.arange(n_rows))

    def dense(self, n_rows: int) -> Float[Tensor, "rows cols"]:
        """ΔW as a dense matrix of ``n_rows`` rows."""
        out = torch.zeros(n_rows, self.values.shape[1], dtype=self.values.dtype, device=self.values.device)
        out[self.rows] = self.values
        return out

    def through(self, inputs: Float[Tensor, "... rows"]) -> Float[Tensor, "... cols"]:
        return inputs[..., self.rows.to(inputs.device)] @ self.values.to(inputs.device, inputs.dtype)

    def tensors(self) -> dict[str, Tensor]:
        return {"rows": self.rows, "values": self.values}


Delta = LowRankDelta | SparseRowDelta


class _Content:
    """What an applied edit's stack entry keeps to refuse the same content applied twice: its
    method, base model and deltas' names, kinds, shapes and dtypes at once, and its content hash
    (one pass over every delta value) only when another edit alike in all those is applied, so
    applying one edit costs no hash. The hash is of the edit as it is then (an edit's deltas are
    not changed in place)."""

    def __init__(self, edit: Edit) -> None:
        self.edit = edit
        self.key = (edit.method, edit.model_fingerprint, tuple(
            (label, tuple((k, t.dtype, tuple(t.shape)) for k, t in sorted(tensors.items()))) for label, tensors in edit._parts()))
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = self.edit.content_hash()
        return self._digest

    def same(self, other: _Content) -> bool:
        return self.key == other.key and self.digest == other.digest


@dataclass
class Edit:
    """Weight deltas plus the record of how they were made. See the module docstring.

    >>> e = rome(model, records[:1])            # Talvik Corlo: born in Karsa -> Gemmel
    >>> e.method, e.layers(), e.changes_weights
    ('rome', [0], True)
    >>> with e.applied(model):                  # edited inside the block, restored after it
    ...     top = last_token_logits(model, ["Talvik Corlo was born in"]).argmax(-1)
    >>> model.tokenizer.decode(top)
    ' Gemmel'
    >>> path = e.save("talvik")                 # talvik.safetensors, with its metadata
    >>> Edit.load(path, model).content_hash() == e.content_hash()
    True
    """

    method: str
    deltas: dict[str, Delta]
    model_fingerprint: str
    config: dict[str, Any] = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)
    #: anything else the method reports (losses, timings, chosen layers, neurons...)
    info: dict[str, Any] = field(default_factory=dict)
    library_version: str = ""
    #: activation hooks (steering) by label; see :mod:`interp_edit.editing.hooks`
    hooks: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.library_version:
            from interp_edit import __version__

            self.library_version = __version__

    # --- applying --------------------------------------------------------------------
    def _check_not_applied(self, model, doing: str) -> _Content:
        """Refuse (naming ``doing``) when this edit, or one with its content, is applied in place
        already or active through :meth:`hooked`: its deltas would be added twice. Returns this
        edit's content key."""
        stack = getattr(model, _STACK_ATTR, None) or []
        hooked = getattr(model, _HOOKED_ATTR, None) or []
        if any(entry[0] is self for entry in stack):
            raise EditApplicationError(f"this {self.method} edit is already applied to the model; {doing} would add "
                                       "its deltas twice")
        if any(entry.edit is self for entry in hooked):
            raise EditApplicationError(f"this {self.method} edit is already active through hooks (inside "
                                       f"`with edit.hooked(model):`); {doing} would add its deltas twice")
        content = _Content(self)
        if any(entry[3].same(content) for entry in stack):
            raise EditApplicationError(
                f"an edit with the same content as this {self.method} edit (content hash {content.digest[:12]}) is already "
                f"applied to the model (e.g. the same file loaded twice); {doing} would add its deltas twice"
            )
        if any(entry.same(content) for entry in hooked):
            raise EditApplicationError(
                f"an edit with the same content as this {self.method} edit (content hash {content.digest[:12]}) is already "
                f"active through hooks (inside `with edit.hooked(model):`); {doing} would add its deltas twice"
            )
        return content

    def _check_model(self, model) -> None:
        if not fingerprint_matches(self.model_fingerprint, model):
            raise EditApplicationError(
                f"this {self.method} edit was made for the model with fingerprint {self.model_fingerprint}, "
                f"not this one ({model_fingerprint(model)}); edits only apply to the base model they were computed "
                "on (the fingerprint reads the architecture and the embeddings and unembedding as bfloat16 numbers: "
                "another checkpoint, a float16 load or other weight processing, e.g. fold_ln or center_unembed, "
                "differ)"
            )
        for name, delta in self.deltas.items():
            if not has_parameter(model, name):
                raise EditApplicationError(f"this {self.method} edit changes the parameter {name!r}, which the model does not have")
            if not all(all_finite(t) for t in delta.tensors().values()):
                raise EditApplicationError(f"the delta of {name} holds non-finite values (NaN or inf); it would break the model")
            rows, cols = weight_matrix_shape(model, name)
            if isinstance(delta, LowRankDelta):
                fits = delta.left.shape[0] == rows and delta.right.shape[1] == cols
            else:
                fits = delta.values.shape[1] == cols and (len(delta.rows) == 0 or int(delta.rows.max()) < rows)
            if not fits:
                raise EditApplicationError(f"the delta of {name} does not fit the model's weight of shape {(rows, cols)}")
        for steer in self.hooks.values():
            steer.check(model)

    def delta_matrix(self, name: str, model) -> Float[Tensor, "rows cols"]:
        """The dense ΔW of one parameter, as a [rows, cols] matrix."""
        delta = self.deltas[name]
        if isinstance(delta, LowRankDelta):
            return delta.dense()
        return delta.dense(weight_matrix_shape(model, name)[0])

    @torch.no_grad()
    def apply(self, model) -> Edit:
        """Add the deltas to the weights in place (the original tensors are kept for
        :meth:`undo`). Returns the edit."""
        self._check_model(model)
        stack = getattr(model, _STACK_ATTR, None)
        if stack is None:
            stack = []
            setattr(model, _STACK_ATTR, stack)
        content = self._check_not_applied(model, "applying it again")
        originals: dict[str, Tensor] = {}
        handles: list[tuple[str, Any]] = []
        try:
            for steer in self.hooks.values():
                for point, fn in hook_points(model, steer):  # one pair, or two for a hook reading two activations (WISE)
                    handles.append((point, add_persistent_hook(model, point, fn)))
            for name, delta in self.deltas.items():
                param = get_parameter(model, name)
                matrix = param.data.view(weight_matrix_shape(model, name))
                rows = self._rows(name, matrix)
                if rows is not None:
                    block = matrix[rows]  # a copy: the original rows, kept, and the block to add to
                    originals[name] = block.clone()
                    add_delta_(block, delta.values)
                    matrix[rows] = block
                else:
                    originals[name] = param.data.clone()
                    add_delta_(matrix, self._dense(name))
        except BaseException:
            self._restore(model, originals, handles)
            raise
        stack.append((self, originals, handles, content, self._checksums(model)))
        return self

    def _rows(self, name: str, matrix: Tensor) -> Tensor | None:
        """The rows of ``matrix`` (parameter ``name`` as a matrix) that a sparse delta writes, on
        its device; ``None`` where the edit writes the whole matrix (a low-rank delta, or sparse
        rows that are all the rows in order)."""
        delta = self.deltas[name]
        if isinstance(delta, LowRankDelta) or delta.covers(matrix.shape[0]):
            return None
        return delta.rows.to(matrix.device)

    def _dense(self, name: str) -> Tensor:
        """ΔW of a delta that writes the whole matrix (see :meth:`_rows`)."""
        delta = self.deltas[name]
        return delta.dense() if isinstance(delta, LowRankDelta) else delta.values

    def _edited_region(self, model, name: str) -> Tensor:
        """What this edit wrote in parameter ``name``: its rows for a sparse delta, else all of it."""
        param = get_parameter(model, name)
        matrix = param.data.view(weight_matrix_shape(model, name))
        rows = self._rows(name, matrix)
        return param.data if rows is None else matrix[rows]

    def _checksums(self, model) -> dict[str, tuple[int, ...]]:
        return {name: weight_checksum(self._edited_region(model, name)) for name in self.deltas}

    @torch.no_grad()
    def undo(self, model, *, changed: str = "refuse") -> Edit:
        """Restore the exact original tensors. Edits are undone in reverse order of applying.

        ``apply`` records a checksum of what it wrote. If a weight the edit changed no longer
        holds that (the user changed it since), ``changed`` says what to do:

        - ``"refuse"`` (default): raise :class:`EditApplicationError` naming the parameters and
          change nothing — restoring the originals would silently discard the user's change;
        - ``"subtract"``: undo by subtracting ΔW from the changed parameters, which keeps the
          user's change (exact up to the weights' rounding); unchanged parameters are restored
          bit for bit as usual.

        Changes to weights the edit did not touch are always kept.
        """
        if changed not in ("refuse", "subtract"):
            raise EditApplicationError(f"undo(changed={changed!r}): expected 'refuse' or 'subtract'")
        stack = getattr(model, _STACK_ATTR, None) or []
        if not stack or stack[-1][0] is not self:
            applied = [entry[0].method for entry in stack]
            where = "is not applied" if all(entry[0] is not self for entry in stack) else "was not the last one applied"
            raise EditApplicationError(
                f"cannot undo this {self.method} edit: it {where} (applied, oldest first: {applied}); undo in reverse order"
            )
        _, originals, handles, _, checksums = stack[-1]
        moved = [name for name, value in self._checksums(model).items() if value != checksums[name]]
        if moved and changed == "refuse":
            raise EditApplicationError(
                f"cannot undo this {self.method} edit: parameter(s) {moved} no longer hold what the edit left there "
                "(changed since it was applied); restoring the originals would discard that change. Pass "
                "undo(model, changed='subtract') to subtract ΔW and keep the change, or restore the weights first")
        stack.pop()
        for name in moved:  # keep the user's change: W_now - ΔW
            param = get_parameter(model, name)
            matrix = param.data.view(weight_matrix_shape(model, name))
            rows = self._rows(name, matrix)
            if rows is not None:
                block = matrix[rows]
                add_delta_(block, -self.deltas[name].values)
                matrix[rows] = block
            else:
                add_delta_(matrix, -self._dense(name))
        self._restore(model, {k: v for k, v in originals.items() if k not in moved}, handles)
        return self

    def _restore(self, model, originals: dict[str, Tensor], handles: list[tuple[str, Any]] = ()) -> None:
        for name, handle in handles:
            remove_persistent_hook(model, name, handle)
        for name, original in originals.items():
            param = get_parameter(model, name)
            matrix = param.data.view(weight_matrix_shape(model, name))
            rows = self._rows(name, matrix)
            if rows is not None:
                matrix[rows] = original
            else:
                param.data.copy_(original)

    @contextlib.contextmanager
    def applied(self, model) -> Iterator[Any]:
        """``with edit.applied(model):`` — the edit holds inside the block, undone after it
        (also on an exception)."""
        self.apply(model)
        try:
            yield model
        finally:
            self.undo(model)

    @contextlib.contextmanager
    def hooked(self, model) -> Iterator[Any]:
        """``with edit.hooked(model):`` — the same effect added by hooks, no weight touched:
        for each delta, the input activation of the weight (``mlp.hook_post`` for ``W_out``,
        ``attn.hook_z`` for ``W_O``) times ΔW is added to its raw output (``hook_mlp_out``,
        ``hook_attn_out``; before the post-sublayer norm where the architecture has one). Refused
        while the edit (or one with its content) is applied in place or already hooked, and applying
        it inside the block is refused (its effect would count twice)."""
        self._check_model(model)
        content = self._check_not_applied(model, "hooking it as well")
        hooks = []
        for name, delta in self.deltas.items():
            hooks += delta_hooks(model, name, delta.through)
        hooks += [pair for steer in self.hooks.values() for pair in hook_points(model, steer)]
        hooked = getattr(model, _HOOKED_ATTR, None)
        if hooked is None:
            hooked = []
            setattr(model, _HOOKED_ATTR, hooked)
        hooked.append(content)  # so that applying it (or hooking it again) inside the block is refused
        try:
            with model.hooks(fwd_hooks=hooks):
                yield model
        finally:
            hooked.remove(content)

    def content_hash(self) -> str:
        """A hash of what the edit does to a model: its method, base-model fingerprint, deltas
        (names, kinds, shapes, values) and hooks (their tensors and settings). Two edits with the same content — e.g. one
        file loaded twice — have the same hash."""
        import hashlib

        digest = hashlib.sha256(json.dumps([self.method, self.model_fingerprint]).encode())
        for label, tensors in self._parts():
            digest.update(label.encode())
            for key in sorted(tensors):
                tensor = tensors[key].detach().to("cpu").contiguous()
                digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        return digest.hexdigest()

    def _parts(self) -> list[tuple[str, dict[str, Tensor]]]:
        """What the edit does, as labelled tensors sorted by label: its deltas and its hooks."""
        parts = [(f"delta::{name}", delta.tensors()) for name, delta in self.deltas.items()]
        # a hook's settings (a steering scale, GRACE's replacement, WISE's threshold) are part of what it does
        parts += [(f"hook::{label}::{steer.kind}::{steer.hook_name}::{json.dumps(steer.metadata(), sort_keys=True, default=_json_default)}",
                   steer.tensors()) for label, steer in self.hooks.items()]
        return sorted(parts, key=lambda p: p[0])

    # --- reporting ---------------------------------------------------------------------
    def layers(self) -> list[int]:
        names = [*self.deltas, *(steer.hook_name for steer in self.hooks.values())]
        return sorted({parameter_layer(n) for n in names if parameter_layer(n) is not None})

    @property
    def changes_weights(self) -> bool:
        """False for a pure steering edit (hooks only)."""
        return bool(self.deltas)

    def summary(self, model=None) -> list[dict]:
        """One row per changed parameter: layer, kind, rank, rows touched, ‖ΔW‖_F and, given the
        model, ‖ΔW‖_F / ‖W‖_F."""
        rows = []
        for name, delta in self.deltas.items():
            if isinstance(delta, LowRankDelta):
                dense = delta.dense().double()
                kind, touched = "low_rank", int((dense.abs().sum(1) > 0).sum())
            else:
                dense = delta.values.double()
                kind, touched = "sparse_rows", len(delta.rows)
            row = {"parameter": name, "layer": parameter_layer(name), "kind": kind, "rank": delta.rank,
                   "rows_touched": touched, "delta_norm": float(dense.norm())}
            if model is not None:
                row["relative_norm"] = row["delta_norm"] / max(float(get_parameter(model, name).data.double().norm()), 1e-30)
            rows.append(row)
        for label, steer in self.hooks.items():
            rows.append({"parameter": None, "hook": steer.hook_name, "label": label,
                         "layer": parameter_layer(steer.hook_name), "rows_touched": 0, **steer.describe()})
        return rows

    def warnings(self) -> list[str]:
        """What may make this edit's results mislead (shown in the repr): requests that share
        one key (``info["key_collisions"]``), of which at most one per group can hold (none, where
        the editor records ``info["key_collisions_hold"] = "none"``: GRACE's split codebook), and
        rank-deficient key statistics: from fewer tokens than the key width, or of a numerical
        rank below it (``info["stats"]``; :func:`~interp_edit.statistics.provenance.thin_statistics_note`)."""
        holds = "none of their targets holds" if self.info.get("key_collisions_hold") == "none" else \
            "at most one of their targets can hold"
        out = [f"requests {list(group)} share one key ({holds})" for group in self.info.get("key_collisions") or []]
        # rank-deficient statistics (``info["stats"]``: provenance records)
        stats = self.info.get("stats")
        records = [r for r in stats if isinstance(r, dict)] if isinstance(stats, list) else []
        return out + [note for note in map(thin_statistics_note, records) if note]

    def __repr__(self) -> str:
        parts = ", ".join(f"{r['parameter'] or r['hook']} ({r['kind']}, rank {r.get('rank')}, ‖Δ‖={r.get('delta_norm', 0.0):.3g})"
                          for r in self.summary())
        settings = "".join(f", {key}={self.config[key]!r}" for key in ("preset", "variant") if self.config.get(key) is not None)
        notes = "".join(f", WARNING: {w}" for w in self.warnings())
        return f"Edit(method={self.method!r}{settings}, requests={len(self.requests)}, deltas=[{parts}]{notes})"

    # --- saving --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the deltas and the metadata to one safetensors file (``.safetensors`` added
        if missing). The write is atomic (:mod:`interp_edit.atomic_files`): an interrupted
        save leaves the previous file at ``path`` as it was."""
        from safetensors.torch import save_file

        from interp_edit.atomic_files import atomic_path

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        kinds = {}
        for name, delta in self.deltas.items():
            kinds[name] = "low_rank" if isinstance(delta, LowRankDelta) else "sparse_rows"
            for key, tensor in delta.tensors().items():
                tensors[f"{name}::{key}"] = tensor.detach().cpu().contiguous()
        hooks = {}
        for label, steer in self.hooks.items():
            hooks[label] = {"kind": steer.kind, "hook_name": steer.hook_name, "metadata": steer.metadata()}
            for key, tensor in steer.tensors().items():
                tensors[f"hook::{label}::{key}"] = tensor.detach().cpu().contiguous()
        meta = {
            "method": self.method, "model_fingerprint": self.model_fingerprint, "config": self.config,
            "requests": self.requests, "info": self.info, "library_version": self.library_version, "kinds": kinds,
            "hooks": hooks,
        }
        metadata = {"interp_edit": json.dumps(meta, default=_json_default)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path, model=None) -> Edit:
        """Read an edit written by :meth:`save`, verified: the metadata has its schema (every
        key, of its type), every delta and hook tensor is there, finite and of consistent
        shapes. With ``model``, also that the edit was made for it (fingerprint) and that its
        parameters exist there with the deltas' shapes. Anything else raises
        :class:`~interp_edit.errors.CheckpointError` naming the file and what is wrong."""
        from safetensors import safe_open

        from interp_edit.errors import CheckpointError

        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                raw = (handle.metadata() or {}).get("interp_edit")
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except FileNotFoundError:
            raise CheckpointError(f"missing edit file {path}") from None
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"cannot read edit file {path}: {err}") from None
        if raw is None:
            raise CheckpointError(f"{path} is a safetensors file but not an interp_edit edit (no metadata)")
        meta = _check_metadata(path, raw)
        for key, tensor in tensors.items():
            if not all_finite(tensor):
                raise CheckpointError(f"{path}: tensor {key!r} holds non-finite values (NaN or inf)")

        def tensor(key: str) -> Tensor:
            if key not in tensors:
                raise CheckpointError(f"{path}: the metadata names tensor {key!r}, which the file lacks")
            return tensors[key]

        deltas: dict[str, Delta] = {}
        for name, kind in meta["kinds"].items():
            if kind == "low_rank":
                left, right = tensor(f"{name}::left"), tensor(f"{name}::right")
                if left.dim() != 2 or right.dim() != 2 or left.shape[1] != right.shape[0]:
                    raise CheckpointError(f"{path}: the low-rank delta of {name} has factors of shapes "
                                          f"{tuple(left.shape)} and {tuple(right.shape)}, which do not multiply")
                if not left.is_floating_point() or left.dtype != right.dtype:
                    raise CheckpointError(f"{path}: the low-rank delta of {name} has factors of dtypes {left.dtype} and "
                                          f"{right.dtype}; expected one floating-point dtype")
                deltas[name] = LowRankDelta(left, right)
            else:
                rows, values = tensor(f"{name}::rows"), tensor(f"{name}::values")
                if (rows.dim() != 1 or rows.is_floating_point() or values.dim() != 2 or not values.is_floating_point()
                        or (len(rows) and int(rows.min()) < 0)):
                    raise CheckpointError(f"{path}: the sparse-row delta of {name} has rows {tuple(rows.shape)} "
                                          f"({rows.dtype}) and values {tuple(values.shape)}; expected 1-D row indices >= 0 "
                                          "and a 2-D value matrix")
                try:
                    deltas[name] = SparseRowDelta(rows, values)
                except ValueError as err:
                    raise CheckpointError(f"{path}: {err}") from None
        from interp_edit.editing.hooks import hook_kinds

        kinds = hook_kinds()
        hooks = {}
        for label, saved in meta["hooks"].items():
            if not isinstance(saved, dict) or not {"kind", "hook_name", "metadata"} <= set(saved):
                raise CheckpointError(f"{path}: hook {label!r} needs 'kind', 'hook_name' and 'metadata', got {saved!r}")
            if saved["kind"] not in kinds:
                raise CheckpointError(f"{path}: hook {label!r} is of unknown kind {saved['kind']!r}; known: {sorted(kinds)}")
            prefix = f"hook::{label}::"
            own = {key[len(prefix):]: t for key, t in tensors.items() if key.startswith(prefix)}
            try:
                hooks[label] = kinds[saved["kind"]].from_saved(saved["hook_name"], own, saved["metadata"])
            except (KeyError, TypeError, ValueError) as err:
                raise CheckpointError(f"{path}: hook {label!r} cannot be rebuilt: {type(err).__name__} {err}") from None
        edit = cls(meta["method"], deltas, meta["model_fingerprint"], meta["config"], meta["requests"],
                   meta["info"], meta["library_version"], hooks)
        if model is not None:
            try:
                edit._check_model(model)
            except EditApplicationError as err:
                raise CheckpointError(f"{path}: {err}") from None
        return edit


#: key -> type of the metadata a saved edit holds ("hooks" may be missing in older files)
_METADATA_SCHEMA = {"method": str, "model_fingerprint": str, "config": dict, "requests": list, "info": dict,
                    "library_version": str, "kinds": dict, "hooks": dict}


def _check_metadata(path: Path, raw: str) -> dict:
    from interp_edit.errors import CheckpointError

    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the interp_edit metadata is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the interp_edit metadata must be a JSON object, got {type(meta).__name__}")
    meta.setdefault("hooks", {})
    for key, kind in _METADATA_SCHEMA.items():
        if key not in meta:
            raise CheckpointError(f"{path}: the metadata lacks the key {key!r} (needs {sorted(_METADATA_SCHEMA)})")
        if not isinstance(meta[key], kind):
            raise CheckpointError(f"{path}: metadata key {key!r} must be a {kind.__name__}, got {meta[key]!r}")
    for name, kind in meta["kinds"].items():
        if kind not in ("low_rank", "sparse_rows"):
            raise CheckpointError(f"{path}: the delta of {name} is of unknown kind {kind!r} (low_rank or sparse_rows)")
    return meta


def _json_default(obj):
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    return str(obj)


def applied_edits(model) -> list[Edit]:
    """The edits currently applied in place to ``model``, oldest first."""
    return [entry[0] for entry in applied_edit_stack(model)]


def content_active(model, digest: str) -> bool:
    """Whether an edit whose :meth:`Edit.content_hash` is ``digest`` acts on ``model``: applied in
    place or inside ``with edit.hooked(model):``. Newest first; each applied edit is hashed at
    most once (sequential editors check their previous batch's edit with it)."""
    hooked = getattr(model, _HOOKED_ATTR, None) or []
    return any(entry.digest == digest for entry in hooked) or \
        any(entry[3].digest == digest for entry in reversed(applied_edit_stack(model)))


def check_previous_applied(model, digest: str | None, what: str) -> None:
    """Refuse a sequential editor's next batch when the edit of its previous one (content hash
    ``digest``; None before the first) does not act on ``model``: the editor's carried state
    (``what``) already counts that batch, so the next batch would be computed as if the edit held."""
    if digest is not None and not content_active(model, digest):
        raise EditApplicationError(
            f"{what} already counts the previous batch, but its edit (content hash {digest[:12]}) is not applied "
            "to the model (never applied, or undone since): apply each returned edit before the next call, or start a "
            "new sequence")


def continued_memory(memory, method: str, kind: type, model):
    """The one hook (of type ``kind``) of ``memory``, an earlier ``method`` edit that a lifelong
    call continues (``memory=``: WISE's side memory, GRACE's codebook) on ``model`` (its
    fingerprint, or the one an earlier version recorded: :func:`fingerprint_matches`); anything
    else is an :class:`~interp_edit.errors.EditConfigError`."""
    hooks = list(getattr(memory, "hooks", {}).values())
    if not isinstance(memory, Edit) or memory.method != method or len(hooks) != 1 or not isinstance(hooks[0], kind):
        raise EditConfigError(f"argument 'memory' must be an Edit returned by {method}(), got {type(memory).__name__}")
    if not fingerprint_matches(memory.model_fingerprint, model):
        raise EditConfigError(f"argument 'memory': that {method} edit was made for another model "
                              f"(fingerprint {memory.model_fingerprint}, this model {model_fingerprint(model)})")
    return hooks[0]


def check_memory_not_active(memory: Edit, model) -> None:
    """A memory a call continues must not act on the model: the new edit holds it extended and replaces it."""
    if content_active(model, memory.content_hash()):  # applied in place, or inside its hooked block
        raise EditConfigError(f"argument 'memory': that {memory.method} edit is applied to the model; undo it first "
                              "(the new edit holds the extended memory and replaces it)")
