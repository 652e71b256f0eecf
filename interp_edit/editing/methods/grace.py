"""GRACE (Hartvigsen et al. 2023, "Aging with GRACE: lifelong model editing with discrete
key-value adaptors"): a codebook at one layer, no weight change.

The codebook holds keys k_j (the activation at the edited site when request j was edited),
values v_j (learned replacement vectors) and deflection radii ε_j. At inference, at every
position whose activation h is within ε of its nearest key,

    ``j* = argmin_j ‖h − k_j‖₂``;  ``h ← v_{j*}``  if  ``‖h − k_{j*}‖₂ ≤ ε_{j*}``

and every other activation is returned bit for bit. Building the codebook follows the
authors' code (Thartvigsen/GRACE, ``grace/editors/grace.py``, ``GRACEAdapter``), request by
request, with the query h_q taken at the *last prompt token* (the code's ``key_id``: the last
token before the labels), d = distance to the nearest key j:

- no key yet, or ``d > ε_init + ε_j``: a new key h_q with radius ε_init;
- ``d ≤ ε_init + ε_j`` and another target: a new key, and both radii split:
  ``ε_j = d/2 − 1e-5``, ``ε_new = d/2``;
- ``d ≤ ε_init + ε_j`` and the same target: no new key; ``ε_j = d`` when ``d > ε_j``
  (``eps_expand="coverage"``), and the request trains the value of key j further.

A value starts ``value_init="cold"`` (uniform in [0, 1), the code's) or ``"warm"`` (the
activation itself) and is trained by Adam (``lr``, ``n_iter`` steps, no early stop, as the code)
on the mean NLL of the request's target tokens, teacher-forced, with the codebook acting.

Where the replacement acts (``replacement``): ``"last"`` (the code's ``replace_last``) the
matched positions only; ``"prompt"`` (the code's ``replace_prompt``, its default) every
position *before* the last matched one of a sequence; ``"all"`` (``replace_all``) every
position of a sequence with a match. The code's adaptor wraps a module, keying on its input
and replacing its output; here (TransformerLens hook points) the key and the replaced
activation are the same activation, the output of ``site`` (default the MLP output
``hook_mlp_out``) — what the codebook compares is then the output, not the module's input
(named deviation). Values of several requests are trained together (Adam is elementwise and
each request's loss reaches only its own value: the same trajectories as one request at a time
while no prompt reaches another request's key); requests that share a key train it in turn,
as in the code. The hook class :class:`~interp_edit.editing.hooks.GraceCodebook` (in the editing core, where
:func:`~interp_edit.editing.hooks.hook_kinds` finds it for ``Edit.load``) saves its tensors with the edit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import forward_to_layer, frozen_parameters, hook_name, model_fingerprint
from interp_edit.editing.config import check_layers, preset_config, resolve
from interp_edit.editing.edit import Edit
from interp_edit.editing.hooks import GRACE_REPLACEMENTS, GraceCodebook
from interp_edit.editing.requests import prepare_requests
from interp_edit.errors import EditConfigError, EditOptimizationError

REPLACEMENTS = GRACE_REPLACEMENTS
SITES = ("mlp_out", "resid_post", "attn_out")
EDIT_TOKENS = ("prompt_last", "subject_last")
VALUE_INITS = ("cold", "warm")
#: the authors' conflict rule shrinks the earlier key's radius to d / 2 - SPLIT_MARGIN
SPLIT_MARGIN = 1e-5


@dataclass(frozen=True)
class GRACEConfig:
    """GRACE's settings. Defaults are the authors' (``grace/config/editor/grace.yaml`` with
    ``model/gpt2xl.yaml``: layer 35 of GPT-2 XL, ε_init 1.0, 100 Adam steps at lr 1.0, cold
    values, ``replace_prompt``, coverage expansion).

    >>> cfg = GRACEConfig.for_model(model, eps=2.0)
    >>> cfg.preset, cfg.layer, cfg.eps
    ('toyworld', 3, 2.0)
    """

    #: the layer whose ``site`` activation the codebook keys on and replaces
    layer: int = 35
    #: the activation: "mlp_out" (the MLP's output), "resid_post" or "attn_out"
    site: str = "mlp_out"
    #: ε_init, the initial deflection radius (Euclidean, in the activation's units)
    eps: float = 1.0
    #: Adam steps per value (the code's ``n_iter``)
    n_iter: int = 100
    #: Adam learning rate of the values (the code's ``edit_lr``)
    lr: float = 1.0
    #: where the replacement acts: "last" (matched positions), "prompt" (the positions before
    #: the last matched one, the code's default) or "all" (the whole sequence)
    replacement: str = "prompt"
    #: the token the query is read at: "prompt_last" (the code's) or "subject_last"
    edit_token: str = "prompt_last"
    #: "cold": a value starts uniform in [0, 1) (the code's); "warm": at the activation itself
    value_init: str = "cold"
    seed: int = 0
    #: the preset these settings started from (see :func:`interp_edit.editing.config.preset_config`)
    preset: str | None = None

    PRESETS: ClassVar[MappingProxyType] = MappingProxyType({
        # Thartvigsen/GRACE config/model/gpt2xl.yaml (transformer.h[35]) + config/editor/grace.yaml
        "gpt2-xl": {},
        # measured on the toy world (tests/test_grace.py; 30 person facts at layer 3's MLP output:
        # keys ‖k‖ ≈ 12, the nearest other fact's key ≥ 8.6 away, a paraphrase's query ≈ 2.7 from
        # its fact's key): ε 3 gives paraphrases 0.75 (ε 1: 0.00) with neighbourhood 0.99
        "toyworld": {"layer": 3, "eps": 3.0, "n_iter": 50, "lr": 0.5, "replacement": "last", "value_init": "warm"},
    })

    @classmethod
    def generic(cls, model) -> dict[str, Any]:
        """A model without a preset: the layer at the depth of GPT-2 XL's 35 of 48."""
        return {"layer": round(35 / 47 * (model.cfg.n_layers - 1))}

    @classmethod
    def for_model(cls, model, **overrides: Any) -> GRACEConfig:
        return preset_config(cls, model, overrides)

    def __post_init__(self) -> None:
        from interp_edit.validation import check_fields

        check_fields(self, EditConfigError, in_place=True)  # types (and finite floats) of every field

    def validate(self) -> None:
        if self.n_iter < 1:
            raise EditConfigError(f"field 'n_iter' must be >= 1, got {self.n_iter}")
        if not self.eps > 0 or not self.lr > 0:
            raise EditConfigError(f"fields 'eps' and 'lr' must be > 0, got {self.eps} and {self.lr}")
        for name, allowed in (("replacement", REPLACEMENTS), ("site", SITES), ("edit_token", EDIT_TOKENS),
                              ("value_init", VALUE_INITS)):
            if getattr(self, name) not in allowed:
                raise EditConfigError(f"field {name!r} must be one of {allowed}, got {getattr(self, name)!r}")

    def as_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)


def build_codebook(queries: Float[Tensor, "n d"], labels: list[tuple[int, ...]], eps: float,
                   start: tuple[Tensor, Tensor, list[tuple[int, ...]], list[list[int]]] | None = None
                   ) -> tuple[Tensor, Tensor, list[list[int]]]:
    """The authors' key rules, request by request (see the module docstring): keys [m, d],
    radii [m] and, per key, the requests whose value it is (in order). ``start``: the codebook
    these requests extend — its keys, radii, key labels and owners (requests numbered before
    these, which are numbered on from ``1 + max`` of them) — as the authors' adaptor keeps one
    codebook across edits.

    >>> keys, radii, owners = build_codebook(torch.tensor([[0.0, 0.0], [1.5, 0.0]]), [(1,), (2,)], eps=1.0)
    >>> radii.tolist(), owners      # two targets within reach: two keys, the radii split at d / 2
    ([0.74998..., 0.75], [[0], [1]])
    """
    keys: list[Tensor] = []
    radii: list[float] = []
    key_labels: list[tuple[int, ...]] = []
    owners: list[list[int]] = []
    offset = 0
    if start is not None:
        keys, radii = list(start[0].double()), [float(r) for r in start[1]]
        key_labels, owners = [tuple(x) for x in start[2]], [list(o) for o in start[3]]
        offset = 1 + max((i for own in owners for i in own), default=-1)
    for i, (query, label) in enumerate(zip(queries.double(), labels, strict=True), start=offset):
        if keys:
            dist = (torch.stack(keys) - query).norm(dim=-1)
            d, j = float(dist.min()), int(dist.argmin())
        if not keys or d > eps + radii[j]:
            keys.append(query), radii.append(eps), key_labels.append(label), owners.append([i])
        elif key_labels[j] != label:  # a conflict: a new key, both radii split
            keys.append(query), radii.append(d / 2), key_labels.append(label), owners.append([i])
            radii[j] = d / 2 - SPLIT_MARGIN
        else:  # the same target: cover the query with key j
            radii[j] = max(radii[j], d)
            owners[j].append(i)
    return torch.stack(keys).float(), torch.tensor(radii, dtype=torch.float32), owners


def lost_requests(keys: Tensor, radii: Tensor, owners: list[list[int]]) -> list[list[int]]:
    """Groups of requests whose keys coincide (up to float rounding: within ``2 * SPLIT_MARGIN``,
    where the conflict rule leaves the earlier key's radius <= 0) and one of whose radii the rule
    left at <= 0 (the same query, other targets): none of them holds reliably. One group per key
    with no radius, with the keys that near it.

    >>> keys = torch.tensor([[0.0, 0.0], [3e-6, 0.0], [5.0, 0.0]])
    >>> lost_requests(keys, torch.tensor([-8.5e-6, 1.5e-6, 1.0]), [[0], [1], [2]])
    [[0, 1]]
    """
    groups: list[list[int]] = []
    for j in (radii <= 0).nonzero().flatten().tolist():
        near = ((keys.double() - keys[j].double()).norm(dim=-1) <= 2 * SPLIT_MARGIN).nonzero().flatten().tolist()
        members = {i for k in near for i in owners[k]}
        group = next((g for g in groups if g & members), None)
        if group is None:
            groups.append(members)
        else:
            group |= members
    return [sorted(g) for g in groups]


def _rows(model, treqs, which: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Teacher-forced rows of requests ``which``: tokens, target positions, ids and mask."""
    from interp_edit.batching import pad_right

    seqs = [list(treqs[i].prompt_ids) + list(treqs[i].target_ids[:-1]) for i in which]
    width = max(len(treqs[i].target_ids) for i in which)
    pos = [[len(treqs[i].prompt_ids) - 1 + t for t in range(width)] for i in which]
    ids = [list(treqs[i].target_ids) + [0] * (width - len(treqs[i].target_ids)) for i in which]
    mask = [[1.0] * len(treqs[i].target_ids) + [0.0] * (width - len(treqs[i].target_ids)) for i in which]
    tokens, _ = pad_right(seqs, model.tokenizer.pad_token_id or 0)
    pos = [[min(p, tokens.shape[1] - 1) for p in row] for row in pos]
    device = model.cfg.device
    return tokens.to(device), torch.tensor(pos, device=device), torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def _train_values(model, treqs, name: str, codebook: GraceCodebook, values: Tensor, rounds: list[list[tuple[int, int]]],
                  cfg: GRACEConfig) -> list[float]:
    """Train ``values`` in place: in each round, each (key, request) pair trains that key's value
    on the request's prompt for ``n_iter`` Adam steps. Returns each request's final NLL."""
    nll_out = [float("nan")] * len(treqs)
    for pairs in rounds:
        which = [request for _, request in pairs]
        tokens, pos, ids, mask = _rows(model, treqs, which)
        trained = torch.tensor([key for key, _ in pairs], device=values.device)
        param = values[trained].clone().requires_grad_(True)
        optimiser = torch.optim.Adam([param], lr=cfg.lr)
        rows = torch.arange(len(which), device=tokens.device)

        def replace(act, hook, trained=trained, param=param):
            # the codebook's own rule, with this round's values differentiable
            live = values.index_put((trained,), param)
            return GraceCodebook(name, codebook.keys, live, codebook.epsilons, codebook.replacement)(act)

        with frozen_parameters(model), torch.enable_grad():
            for step in range(cfg.n_iter + 1):
                with model.hooks(fwd_hooks=[(name, replace)]):
                    logits = model(tokens)
                logp = torch.log_softmax(logits[rows[:, None], pos].float(), -1).gather(-1, ids[..., None])[..., 0]
                nll = -(logp * mask).sum(-1) / mask.sum(-1)
                if not torch.isfinite(nll).all():
                    bad = which[int((~torch.isfinite(nll)).nonzero()[0])]
                    raise EditOptimizationError(f"request {treqs[bad].index} ({treqs[bad].request.text!r}): the GRACE value "
                                                f"training gave a non-finite loss at step {step}; the model is unchanged")
                # no key of this round can fire (each query sits on another target's key: no
                # radius): the values get no gradient and stay, as under the authors' code
                if step == cfg.n_iter or not nll.requires_grad:
                    break
                optimiser.zero_grad()
                nll.sum().backward()
                optimiser.step()
        with torch.no_grad():
            values[trained] = param.detach()
        for (_, request), value in zip(pairs, nll.detach().tolist(), strict=True):
            nll_out[request] = value
    return nll_out


def _previous(memory, model, cfg: GRACEConfig, fingerprint: str, name: str) -> tuple[GraceCodebook, list, list] | None:
    """The codebook a call continues (``memory``), its key labels and owners, checked before any compute."""
    if memory is None:
        return None
    from interp_edit.editing.edit import check_memory_not_active, continued_memory

    held = continued_memory(memory, "grace", GraceCodebook, model)
    if held.hook_name != name or held.replacement != cfg.replacement:
        raise EditConfigError(f"argument 'memory': its codebook is at {held.hook_name} with replacement "
                              f"{held.replacement!r}; fields 'layer' / 'site' / 'replacement' give {name} and {cfg.replacement!r}")
    labels, owners = memory.info.get("key_labels"), memory.info.get("key_requests")
    if labels is None or owners is None or len(labels) != len(held.keys) or len(owners) != len(held.keys):
        raise EditConfigError("argument 'memory': that GRACE edit does not record its keys' targets (made by an older "
                              "version); it cannot be continued")
    check_memory_not_active(memory, model)
    return held, [tuple(x) for x in labels], [list(o) for o in owners]


def grace(model, requests, config: GRACEConfig | None = None, *, memory: Edit | None = None, corpus=None, cache_dir=None,
          stats=None, progress: bool = False, **overrides) -> Edit:
    """A GRACE edit of ``requests`` (EditRequests, CounterFact records or dicts): one
    :class:`GraceCodebook` hook at ``site`` of ``layer``, no weight delta. ``memory``: an
    earlier GRACE edit whose codebook this call extends, as the authors' adaptor keeps one
    codebook across a sequence of edits (its keys, radii and values; the old edit must not be
    applied: the new one holds the whole codebook and replaces it). ``corpus`` / ``cache_dir``
    / ``stats`` / ``progress`` are accepted for a uniform call and unused (GRACE needs no key
    statistics). The model is unchanged; apply the returned :class:`Edit`.

    >>> e = grace(model, records[:1])
    >>> e.changes_weights, list(e.hooks)
    (False, ['layer3'])
    >>> with e.applied(model):
    ...     top = last_token_logits(model, ["Talvik Corlo was born in"]).argmax(-1)
    """
    cfg = resolve(GRACEConfig, model, config, overrides)
    check_layers(model, [cfg.layer], "layer")
    fingerprint = model_fingerprint(model)
    name = hook_name(cfg.site, cfg.layer)
    prior = _previous(memory, model, cfg, fingerprint, name)
    treqs = prepare_requests(model, requests, fingerprint, edit_token=cfg.edit_token)
    start = time.perf_counter()
    # the queries: the site's activation at each request's edit token (a layer's own activation
    # does not depend on a codebook at that layer, so they are read once, on the unedited model)
    from interp_edit.batching import pad_right

    tokens, _ = pad_right([r.prompt_ids for r in treqs], model.tokenizer.pad_token_id or 0)
    with torch.no_grad():
        act = forward_to_layer(model, tokens.to(model.cfg.device), cfg.layer + 1, [name])[name]
    queries = act[torch.arange(len(treqs), device=act.device),
                  torch.tensor([r.edit_position for r in treqs], device=act.device)].float()
    labels = [tuple(r.target_ids) for r in treqs]
    start_book = None if prior is None else (prior[0].keys.float().cpu(), prior[0].epsilons.float().cpu(), prior[1], prior[2])
    n_before = 0 if prior is None else len(prior[0].keys)
    offset = 0 if prior is None else 1 + max((i for own in prior[2] for i in own), default=-1)
    keys, radii, owners = build_codebook(queries.cpu(), labels, cfg.eps, start=start_book)
    key_labels = [*(prior[1] if prior is not None else []), *(labels[own[0] - offset] for own in owners[n_before:])]
    # a query on another target's key (d = 0): the split leaves both radii <= 0 (the authors' rule), neither holds
    # (groups with a request of this call: an earlier call's were warned about then; numbers count the memory's requests)
    collisions = [group for group in lost_requests(keys, radii, owners) if max(group) >= offset]
    if collisions:
        import warnings

        from interp_edit.errors import KeyCollisionWarning

        warnings.warn(f"GRACE: requests {collisions} have the same query (layer {cfg.layer}, {cfg.site} at "
                      f"{cfg.edit_token}) and other targets: the codebook's split (the authors' rule) leaves their keys "
                      "no radius, so none of them holds; edit them in separate calls", KeyCollisionWarning, stacklevel=2)
    new_keys = keys[n_before:]
    if cfg.value_init == "warm":
        values = new_keys.clone()
    else:
        generator = torch.Generator().manual_seed(cfg.seed)
        values = torch.rand(new_keys.shape, generator=generator)
    if prior is not None:  # the codebook's trained values go on (a key a request joins trains further)
        values = torch.cat([prior[0].values.float().cpu(), values])
    device = model.cfg.device
    codebook = GraceCodebook(name, keys.to(device), values.to(device), radii.to(device), cfg.replacement)
    values = values.to(device)
    # this call's requests, numbered from 0 here: rounds of (key, request) pairs
    fresh = [[i - offset for i in own if i >= offset] for own in owners]
    rounds = [[(key, own[r]) for key, own in enumerate(fresh) if len(own) > r] for r in range(max(map(len, fresh)))]
    timings = {"codebook": time.perf_counter() - start}
    start = time.perf_counter()
    nll = _train_values(model, treqs, name, codebook, values, rounds, cfg)
    timings["values"] = time.perf_counter() - start
    hook = GraceCodebook(name, keys, values.detach().cpu(), radii, cfg.replacement)
    info = {"layer": cfg.layer, "hook": name, "n_keys": len(keys), "key_requests": owners,
            "key_labels": [list(label) for label in key_labels], "target_nll": nll,
            "key_collisions": collisions, "key_collisions_hold": "none",
            "edit_positions": [r.edit_position for r in treqs], "seconds": timings,
            "continues": memory.content_hash() if memory is not None else None}
    held_requests = list(memory.requests) if memory is not None else []
    return Edit("grace", {}, fingerprint, cfg.as_dict(), held_requests + [r.request.as_dict() for r in treqs], info,
                hooks={f"layer{cfg.layer}": hook})


__all__ = ["GRACEConfig", "GraceCodebook", "build_codebook", "grace", "lost_requests"]
