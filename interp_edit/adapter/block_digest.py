"""What the blocks' weights below a key site are, as a few numbers that are the same on either
backend: :func:`key_site_digest` tells two models with the same embeddings (one
:func:`~interp_edit.adapter.model_fingerprint`) apart when their blocks differ — a saved edited
model, a merged LoRA adapter, a fine-tune that kept the embeddings — so statistics cached for
one are not read for the other.

    key_site_digest(model, 5, "mlp_post")   # [Σw, Σw²] over what computes layer 5's MLP keys

The keys at (layer, site) are computed from the blocks below ``layer`` and, in ``layer``, the
attention's query, key and value weights (site ``"z"``) or the whole attention and the MLP's
input and gate weights (site ``"mlp_post"``). The digest is the sum of those matrices' entries
and of their squares, in float64: a sum does not depend on how a backend stores a weight
(HookedTransformer's per-head split, the bridge's fused or transposed Hugging Face tensors), and
grouped-query key and value weights are read once per key-value head on both. The weight
written at the site (``W_out``, ``W_O``) is not part of it: an edit there leaves the keys, and
their statistics, as they were. Biases and norms are left out (HookedTransformer holds zeros for
absent biases, and Gemma's norm gain is stored as ``1 + w`` by one backend); two models that
differ only there are not told apart.
"""

from __future__ import annotations

import torch

from interp_edit.adapter import bridge

#: the matrices of a block in each part, by TransformerLens name
PARTS = {
    "attn_in": ("attn.W_Q", "attn.W_K", "attn.W_V"),
    "attn_out": ("attn.W_O",),
    "mlp_in": ("mlp.W_in", "mlp.W_gate"),
    "mlp_out": ("mlp.W_out",),
}
#: the parts of the key site's own layer its keys depend on
SITE_PARTS = {"z": ("attn_in",), "mlp_post": ("attn_in", "attn_out", "mlp_in")}
#: relative difference of two digests still counted as equal (float64 sums of the same numbers)
TOLERANCE = 1e-9


def _matrix(model, layer: int, name: str) -> torch.Tensor | None:
    """A block matrix as stored (per key-value head for grouped-query K and V), or None."""
    module_name, attr = name.split(".")
    if bridge.is_bridge(model):
        try:
            return bridge.parameter(model, f"blocks.{layer}.{name}").detach()
        except KeyError:
            return None
    module = getattr(model.blocks[layer], module_name, None)
    weight = getattr(module, f"_{attr}", None)  # HookedTransformer's grouped-query K / V, unrepeated
    if weight is None:
        weight = module._parameters.get(attr) if module is not None else None
    return None if weight is None else weight.detach()


@torch.no_grad()
def _sums(tensor: torch.Tensor, *, chunk: int = 1 << 22) -> tuple[float, float]:
    flat = tensor.reshape(-1)
    total = torch.zeros(2, dtype=torch.float64, device=flat.device)
    for start in range(0, flat.numel(), chunk):
        part = flat[start : start + chunk].to(torch.float64)
        total += torch.stack([part.sum(), (part * part).sum()])
    first, second = total.tolist()
    return first, second


def part_sums(model, layer: int) -> dict[str, tuple[float, float]]:
    """[Σw, Σw²] of each part (:data:`PARTS`) of block ``layer``."""
    sums = {}
    for part, names in PARTS.items():
        pairs = [_sums(t) for t in (_matrix(model, layer, name) for name in names) if t is not None]
        sums[part] = (sum(p[0] for p in pairs), sum(p[1] for p in pairs))
    return sums


def key_site_digest(model, layer: int, site: str, known: dict | None = None) -> list[float]:
    """[Σw, Σw²] over the weights that compute the keys at ``(layer, site)`` (module docstring).
    ``known``: a dict the caller keeps across calls on one model whose weights do not change
    meanwhile (the blocks' sums are put there and read from there)."""
    known = {} if known is None else known
    total = [0.0, 0.0]
    for below in range(layer + 1):
        if below not in known:
            known[below] = part_sums(model, below)
        for part in PARTS if below < layer else SITE_PARTS[site]:
            total[0] += known[below][part][0]
            total[1] += known[below][part][1]
    return total


def digests_match(recorded, current) -> bool:
    """Two digests equal within :data:`TOLERANCE` (relative to the sum of squares)."""
    scale = max(abs(float(current[1])), 1e-30)
    return all(abs(float(a) - float(b)) <= TOLERANCE * scale for a, b in zip(recorded, current, strict=True))
