"""How the residual stream decomposes, read from the :class:`~interp_edit.adapter.architecture.Architecture`:
where each sublayer's output joins the residual, what an FFN layer reads, and the weights its
nonlinearity acts on. Used by the attribution analyses (NLKA, Q-V pathways, DLA) so that they
are exact on every family.

- **Order of a block.** Sequential blocks: ``resid_mid = resid_pre + attn_out``, ``resid_post =
  resid_mid + mlp_out``. Parallel blocks (GPT-J, NeoX, Phi) have no ``resid_mid``; the
  attention-then-FFN decomposition still holds with ``resid_pre + attn_out`` in its place
  (:func:`ffn_base`), but the FFN *reads* ``resid_pre`` (:func:`ffn_input`), not the same
  layer's attention.
- **Post-sublayer norms** (Gemma-2): ``attn_out = ln1_post(z W_O + b_O)``, ``mlp_out =
  ln2_post(m W_out + b_out)``. With the norm's scale σ frozen at the run's value (as the final
  norm is frozen for the logit readout), ``ln_post(v) = γ ⊙ v / σ`` is linear: a raw output
  ``v`` at position ``p`` joins the residual as ``v ⊙ gain[p]`` (:func:`write_gain`), and the
  neurons' shares add up to ``attn_out`` / ``mlp_out`` exactly.
- **Residual multiplier** (Granite): ``resid_mid = resid_pre + r · attn_raw``, ``resid_post =
  resid_mid + r · mlp_raw`` (``r = residual_multiplier``; ``hook_attn_out`` / ``hook_mlp_out``
  see the scaled contribution). What a row of ``W_out`` / ``W_O`` writes into the residual is
  the row times r (:func:`write_weight`, :func:`write_scaled`; before a post-norm's gain,
  where the multiplier comes after the norm), so the neurons' shares again add up to
  ``attn_out`` / ``mlp_out``.
- **No input norms** (OLMo-2, OLMo-3: ``Architecture.input_norms`` False): attention reads
  ``resid_pre`` and the MLP ``resid_mid`` as they are. A reader of an input norm's scale σ
  (:func:`input_scale`) gets 1, of its gain ones and of its bias zeros
  (:func:`~interp_edit.adapter.params.norm_weight`), and nothing is centred
  (``Architecture.input_norm_centres``): ``mlp.hook_pre`` is ``resid_mid · W_gate`` exactly.
- **Gated MLPs**: ``m = act(x W_gate) ⊙ (x W_in)``; the nonlinearity acts on the gate, so the
  pre-activation of an FFN neuron is ``x W_gate`` (:func:`ffn_gate_weight`, ``mlp.hook_pre``).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter.architecture import INPUT_NORMS, architecture
from interp_edit.adapter.hooks import hook_name, softcap  # noqa: F401  (softcap: re-exported for the readouts)
from interp_edit.errors import UnsupportedArchitectureError

SUBLAYERS = ("attn", "mlp")
_POST_NORMS = {"attn": "ln1_post", "mlp": "ln2_post"}


def stream_names(model) -> list[str]:
    """Hook names :func:`stream_points`, :func:`ffn_base` and :func:`ffn_input` need."""
    arch = architecture(model)
    names = [hook_name("resid_pre", layer) for layer in range(arch.n_layers)]
    names += [hook_name("resid_post", layer) for layer in range(arch.n_layers)]
    if arch.parallel_blocks:
        names += [hook_name("attn_out", layer) for layer in range(arch.n_layers)]
    else:
        names += [hook_name("resid_mid", layer) for layer in range(arch.n_layers)]
    return names


def ffn_base(model, cache: dict[str, Tensor], layer: int) -> Float[Tensor, "batch pos d_model"]:
    """The residual the FFN output of ``layer`` is added to when a block is read as attention
    then FFN: ``resid_mid`` (sequential), ``resid_pre + attn_out`` (parallel)."""
    if architecture(model).parallel_blocks:
        return cache[hook_name("resid_pre", layer)] + cache[hook_name("attn_out", layer)]
    return cache[hook_name("resid_mid", layer)]


def ffn_input(model, cache: dict[str, Tensor], layer: int) -> Float[Tensor, "batch pos d_model"]:
    """The residual the FFN of ``layer`` reads (through its input norm ``ln2``)."""
    return cache[hook_name(architecture(model).ffn_input_site, layer)]


def stream_points(model, cache: dict[str, Tensor]) -> Float[Tensor, "batch point pos d_model"]:
    """``resid_pre^0`` then, per layer, the residual after its attention (:func:`ffn_base`) and
    after its FFN (``resid_post``): ``2 n_layers + 1`` points whose successive differences are
    the sublayers' outputs."""
    n = architecture(model).n_layers
    points = [cache[hook_name("resid_pre", 0)]]
    for layer in range(n):
        points += [ffn_base(model, cache, layer), cache[hook_name("resid_post", layer)]]
    return torch.stack(points, 1)


def _input_norm_site(model, norm: str) -> str:
    """The residual site the input norm ``norm`` reads: ``resid_pre`` (``ln1``), the FFN's input
    site (``ln2``)."""
    if norm not in INPUT_NORMS:
        raise ValueError(f"norm must be 'ln1' or 'ln2', got {norm!r}")
    return "resid_pre" if norm == "ln1" else architecture(model).ffn_input_site


def input_scale_names(model, norm: str) -> list[str]:
    """Hook names :func:`input_scale` needs for the input norm ``norm`` (``"ln1"`` / ``"ln2"``) of
    every layer: its ``hook_scale``; where the blocks have no input norms, the residual the
    sublayer reads instead (for the shape of the scale 1)."""
    site = _input_norm_site(model, norm)
    arch = architecture(model)
    point = f"{norm}_scale" if arch.input_norms else site
    return [hook_name(point, layer) for layer in range(arch.n_layers)]


def input_scale(model, cache: dict[str, Tensor], norm: str, layer: int) -> Float[Tensor, "batch pos 1"]:
    """The scale σ the input norm ``norm`` (``"ln1"`` before attention, ``"ln2"`` before the MLP) of
    ``layer`` divides by in the cached run ([batch, pos, 1]); ones where the blocks have no input
    norms (the sublayer reads the raw residual)."""
    site = _input_norm_site(model, norm)
    if not architecture(model).input_norms:
        return torch.ones_like(cache[hook_name(site, layer)][..., :1])
    return cache[hook_name(f"{norm}_scale", layer)]


def ffn_gate_weight(model, layer: int) -> Float[Tensor, "d_model d_mlp"]:
    """The input weights of an FFN layer's nonlinearity: ``W_gate`` for gated MLPs, ``W_in``
    otherwise; ``mlp.hook_pre`` is the input (after ``ln2``, where there is one) times these (plus ``b_in`` for
    non-gated MLPs)."""
    mlp = model.blocks[layer].mlp
    return (mlp.W_gate if architecture(model).gated_mlp else mlp.W_in).detach()


def write_scaled(model, raw: Tensor) -> Tensor:
    """A sublayer's raw output (``m W_out``, ``z W_O``, a bias, or the weights themselves) as it is
    scaled on its way into the residual: times the architecture's ``residual_multiplier``
    (Granite); ``raw`` itself where there is none. A post-sublayer norm's gain
    (:func:`write_gain`) still applies, to the result (the multiplier is a scalar: the order
    does not matter)."""
    scale = architecture(model).residual_multiplier
    return raw if scale == 1.0 else raw * scale


def write_weight(model, name: str, layer: int) -> Float[Tensor, "... d_model"]:
    """A sublayer's output weight ``name`` (``"W_out"`` [d_mlp, d_model], ``"W_O"`` [head, d_head,
    d_model]) of ``layer``, detached, as its rows write into the residual: times the residual
    multiplier (:func:`write_scaled`). Through a post-sublayer norm, :func:`written` with
    :func:`write_gain` then gives what a unit of each row adds to the residual."""
    from interp_edit.adapter.params import layer_weight

    return write_scaled(model, layer_weight(model, name, layer))


def write_gain_names(model) -> list[str]:
    """Hook names :func:`write_gain` needs (the post-sublayer norms' scales; none without them)."""
    arch = architecture(model)
    if not arch.post_norms:
        return []
    return [hook_name(f"{_POST_NORMS[s]}_scale", layer) for s in SUBLAYERS for layer in range(arch.n_layers)]


def write_gain(model, cache: dict[str, Tensor], layer: int, sublayer: str) -> Float[Tensor, "batch pos d_model"] | None:
    """``γ / σ`` of the post-sublayer norm of ``sublayer`` (``"attn"`` / ``"mlp"``) in ``layer``,
    σ frozen at the cached run: a raw output vector ``v`` (a neuron's ``m_i W_out[i]`` or
    ``α v W_O[h, j]``, scaled by :func:`write_scaled`) at position ``p`` joins the residual as
    ``v * gain[:, p]``. ``None`` where the model has no post-sublayer norms (the vector joins as
    it is)."""
    if sublayer not in SUBLAYERS:
        raise ValueError(f"sublayer must be one of {SUBLAYERS}, got {sublayer!r}")
    arch = architecture(model)
    if not arch.post_norms:
        return None
    if arch.norm != "rmsnorm":
        raise UnsupportedArchitectureError("post-sublayer LayerNorms (only RMSNorm post-norms are covered)")
    from interp_edit.adapter.params import norm_weight

    gamma = norm_weight(model, _POST_NORMS[sublayer], layer)
    scale = cache[hook_name(f"{_POST_NORMS[sublayer]}_scale", layer)]  # [batch, pos, 1]
    return gamma / scale


def written(vectors: Float[Tensor, "... d_model"], gain: Float[Tensor, " d_model"] | None) -> Float[Tensor, "... d_model"]:
    """``vectors`` as they join the residual through a (frozen) post-norm gain (identity for ``None``)."""
    return vectors if gain is None else vectors * gain

