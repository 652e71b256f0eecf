"""ACE (attribution-controlled editing for multi-hop recall, ICLR 2026; spec B7 / A4).

In a multi-hop question ("The capital of the homeland of X is"), the implicit intermediate
entity (X's birth city) acts through *query* FFN neurons in shallow-to-middle layers that
activate *value* FFN neurons in deeper layers. ACE edits both ends of these pathways:

1. **Layers.** Query and value layers come from :func:`~interp_edit.analysis.pathways.qv_pathways`
   on the requests' multi-hop prompts (a dataset-level ranking over the whole batch, each
   prompt scored for the model's own top-1 answer, i.e. the pathway that recalls the current
   answer): the ``n_query_layers`` best query layers (the last layer cannot query anything
   and is never one), then the ``n_value_layers`` best value layers — **[choice]** by
   default only layers above every query layer (``value_above_query``), since a pathway runs
   from a query neuron to a later value neuron and the paper's layers are disjoint (GPT-J:
   query 16–18, value 28–30). Either set can instead be fixed in the config.
2. **Value stage.** A closed-form MEMIT-style spread (:func:`~interp_edit.editing.methods.memit.spread_update`)
   over the value layers, with one row per multi-hop prompt *at its last token*
   (``edit_token="prompt_last"``) whose target is the new multi-hop answer, plus — with
   ``value_fact_rows`` — the single-hop fact at its prompt's last token.
3. **Query stage.** The complementary MEMIT-style spread over the query layers at the
   subject's last token for the single-hop fact(s), computed on the model with the value
   stage already in place, so that the subject itself now retrieves the new intermediate
   entity for phrasings the value stage never saw.

Only MLP ``W_out`` matrices change; attention is untouched. The model is unchanged after
computing the edit. **[choice]** The paper leaves open the order's details, the statistics
weight of each stage (``value_mom2_update_weight`` / ``query_mom2_update_weight``) and which
prompts the value stage writes; all are config fields.

A request is an :class:`ACERequest` (single-hop fact(s) + multi-hop prompts and their new
answers), or anything carrying that structure: a MQuAKE case or record, or a CounterFact case
or record with a ``multihop`` probe. A plain single-hop request has no hop structure and is
refused with an :class:`~interp_edit.errors.EditRequestError` naming the request and the field.

**The authors' code** (yjywdzh/ACE, ``ace/edit/ace/ace_main.py`` ``execute_ace`` with
``compute_zs.py`` / ``compute_ks.py``, built on PMET's code) edits differently from the steps
above; ``variant="reference"`` follows it (the default ``"pathways"`` is the design above):

- the requests are the single-hop facts only (``requested_rewrite``), at the subject's last
  token; the multi-hop questions play no part in the edit (here they still choose the layers,
  when these are not fixed: the code's layers are set by hand from its notebooks' neuron
  attribution);
- the layers come as two groups, ``[query_layers, value_layers]`` (GPT-J: ``[[3..8], [23, 24, 25]]``),
  edited in that order as one flat list; PMET's joint attention + FFN targets
  (:func:`~interp_edit.editing.methods.pmet.optimise_pmet_targets`: NLL + KL("{} is a") +
  ‖δ‖/‖h‖² decay, clamp, the code's stopping rules) at the *last* layer of the last group, z;
- every layer l of both groups writes ``W_O`` (attention ``out_proj``, with ``update_attention``;
  the GPT-J and Qwen3 hparams list it) and then ``W_out`` (``fc_out``) with PMET's closed form
  ``ΔW = (λC + KKᵀ)⁻¹ K R``, R = (z − the current module output at z's layer) / √(layers left
  *in l's group*) (``group_split="group"``; ``"flat"``: / √(layers left in the flat list) —
  what the code does on every call after its first in one process, because ``execute_ace``
  flattens ``hparams.layers`` in place); one λ per group (query / value ``mom2_update_weight``;
  the code has one for both); both modules' keys at l are read before l's first write (the
  code's ``compute_ks_parallel``), the residual after every write.

So the first group alone writes the whole remaining residual at z's layer (its last layer has
share √1); the second group writes what is left after it. The target optimisation follows the
config's target fields (the code's: ``kl_direction="edited||original"``,
``step_count="reference"``, MEMIT's prefixes and ``key_average="by_type"``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import forward_to_layer, hook_name, model_fingerprint
from interp_edit.batching import encode_prompts, pad_right
from interp_edit.editing.closed_form import add_low_rank, scratch_weights, solve, w_out_name
from interp_edit.editing.config import EditorConfig, check_layers, resolve
from interp_edit.editing.edit import Edit, LowRankDelta
from interp_edit.editing.requests import EditRequest, TokenizedRequest, as_request, prepare_requests
from interp_edit.editing.spread import spread_update
from interp_edit.errors import EditConfigError, EditRequestError
from interp_edit.statistics.keys import editor_statistics, provenance_records


@dataclass(frozen=True)
class ACERequest:
    """One ACE edit: the single-hop fact(s) to rewrite and the multi-hop prompts that pass
    through them, with their new answers (one per prompt). Every multi-hop prompt is a full
    string that mentions the subject of one of the facts.

    >>> fact = EditRequest("{} was born in", "Talvik Corlo", "Pellin", target_true="Karsa")
    >>> req = ACERequest(facts=(fact,),
    ...                  multihop_prompts=("The capital of the homeland of Talvik Corlo is",),
    ...                  multihop_answers=("Briva",))
    >>> e = ace(model, [req], steps=3, stats_samples=200)    # a MQuAKE case works too
    >>> e.method
    'ace'
    """

    facts: tuple[EditRequest, ...]
    multihop_prompts: tuple[str, ...]
    multihop_answers: tuple[str, ...]
    #: optional multi-hop prompts about *other* subjects whose last-token keys the value stage
    #: should leave alone (weighted by ``ACEConfig.preserve_weight``)
    preserve_prompts: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"facts": [f.as_dict() for f in self.facts], "multihop_prompts": list(self.multihop_prompts),
                "multihop_answers": list(self.multihop_answers), "preserve_prompts": list(self.preserve_prompts)}


#: the stage orders :class:`ACEConfig` knows
ORDERS = ("value_first", "query_first")
#: ``"pathways"``: the two-stage design of the module docstring; ``"reference"``: the authors' code
VARIANTS = ("pathways", "reference")
#: the reference variant's residual share: per layer group (the code as written) or over all layers
GROUP_SPLITS = ("group", "flat")


@dataclass(frozen=True)
class ACEConfig(EditorConfig):
    """ACE's settings. Defaults: 3 query and 3 value layers chosen by the Q-V pathway analysis
    (the paper's layer groups are three wide), MEMIT's GPT-2 XL statistics weight and target
    settings. The GPT-J preset fixes the query layers the paper identified (16–18) with MEMIT's
    GPT-J λ; the value layers it names (28–30) lie past GPT-J-6B's last layer (27), so they are
    chosen by the pathway analysis. The paper gives no GPT-2 XL layers, so that preset keeps the
    pathway-driven choice.

    >>> cfg = ACEConfig.for_model(model, n_query_layers=1)
    >>> cfg.preset, cfg.n_query_layers, cfg.query_layers is None   # None: chosen by pathways
    ('toyworld', 1, True)
    """

    #: query layers chosen by the pathway analysis (when ``query_layers`` is not fixed)
    n_query_layers: int = 3
    #: value layers chosen by the pathway analysis (when ``value_layers`` is not fixed)
    n_value_layers: int = 3
    #: fixed query layers (increasing); ``None``: from the pathway analysis
    query_layers: tuple[int, ...] | None = None
    #: fixed value layers (increasing); ``None``: from the pathway analysis
    value_layers: tuple[int, ...] | None = None
    #: [choice] pathway-chosen value layers lie above every query layer
    value_above_query: bool = True
    #: value neurons the pathway analysis keeps (its ``n_value``)
    pathway_value_neurons: int = 50
    #: [choice] ``"value_first"`` (the paper: the value stage, then the query stage computed on
    #: the model with it) or ``"query_first"`` (the value stage writes what the query edit leaves)
    order: str = "value_first"
    #: [choice] the value stage also writes the single-hop fact(s) at their prompt's last token
    value_fact_rows: bool = True
    #: [choice] λ of the value stage's least squares (MEMIT GPT-2 XL: 20,000)
    value_mom2_update_weight: float = 20_000.0
    #: [choice] λ of the query stage's least squares (MEMIT GPT-2 XL: 20,000)
    query_mom2_update_weight: float = 20_000.0
    #: [choice] μ: the value stage solves (λC + μ K_p K_pᵀ + K Kᵀ)⁻¹ K R, K_p the last-token keys of
    #: the requests' ``preserve_prompts`` (none given: no term)
    preserve_weight: float = 1.0
    clamp_norm_factor: float = 0.75
    n_prefixes: int = 5
    #: ``"pathways"`` (the design above) or ``"reference"`` (the authors' code's editing step:
    #: PMET over the two layer groups on the facts; module docstring)
    variant: str = "pathways"
    #: reference variant: also write ``W_O`` at every edited layer (the code's GPT-J / Qwen3 hparams)
    update_attention: bool = True
    #: reference variant: the residual share, √(layers left in the group) (``"group"``, the code
    #: as written) or √(layers left in all) (``"flat"``, the code after its first call)
    group_split: str = "group"

    PRESETS = MappingProxyType({
        "gpt2-xl": {},
        # GPT-J-6B has layers 0-27: the value layers 28-30 the paper names do not exist in it, so
        # the value layers come from the pathway analysis (above the fixed query layers)
        "gpt-j-6B": {"query_layers": (16, 17, 18),
                     "value_mom2_update_weight": 15_000.0, "query_mom2_update_weight": 15_000.0},
        "toyworld": {"n_query_layers": 2, "n_value_layers": 2, "stats_samples": 4000,
                     "value_mom2_update_weight": 100.0, "query_mom2_update_weight": 100.0, "n_prefixes": 3,
                     "prefix_length": 8, "steps": 15, "lr": 1.0, "clamp_norm_factor": 4.0},
    })

    def validate(self) -> None:
        super().validate()
        for name in ("n_query_layers", "n_value_layers", "pathway_value_neurons"):
            if getattr(self, name) < 1:
                raise EditConfigError(f"field {name!r} must be >= 1, got {getattr(self, name)}")
        for name in ("query_layers", "value_layers"):
            layers = getattr(self, name)
            if layers is not None and (not layers or list(layers) != sorted(set(layers))):
                raise EditConfigError(f"field {name!r} must be None or increasing and non-empty, got {layers}")
        if self.order not in ORDERS:
            raise EditConfigError(f"field 'order' must be one of {ORDERS}, got {self.order!r}")
        if self.variant not in VARIANTS:
            raise EditConfigError(f"field 'variant' must be one of {VARIANTS}, got {self.variant!r}")
        if self.group_split not in GROUP_SPLITS:
            raise EditConfigError(f"field 'group_split' must be one of {GROUP_SPLITS}, got {self.group_split!r}")
        for name in ("value_mom2_update_weight", "query_mom2_update_weight", "preserve_weight"):
            if getattr(self, name) < 0:
                raise EditConfigError(f"field {name!r} must be >= 0, got {getattr(self, name)}")


# --- requests ----------------------------------------------------------------------------

_MISSING = ("ACE needs the hop structure: multi-hop prompts through the edited fact and their new answers "
            "(an ACERequest, a MQuAKE case/record, or a CounterFact case/record with a 'multihop' probe)")


def _probe_fields(probe, index: int, where: str) -> tuple[tuple[str, ...], str]:
    questions = getattr(probe, "questions", None) if not isinstance(probe, dict) else probe.get("questions")
    answer = getattr(probe, "new_answer", None) if not isinstance(probe, dict) else probe.get("new_answer")
    if not questions:
        raise EditRequestError(f"request {index}: field '{where}questions' is missing or empty; {_MISSING}")
    if answer is None:
        raise EditRequestError(f"request {index}: field '{where}new_answer' is missing; {_MISSING}")
    answer = answer["str"] if isinstance(answer, dict) else answer
    return tuple(questions), answer


def as_ace_request(item, index: int = 0) -> ACERequest:
    """An :class:`ACERequest` from an ACERequest, a MQuAKE case (``interp_edit.data``) or
    record (dict with ``requested_rewrite`` list, ``questions``, ``new_answer``), or a
    CounterFact case or record with a ``multihop`` probe. Anything without the hop structure
    raises :class:`EditRequestError` naming the request and the missing field."""
    from interp_edit.data.cases import CounterFactCase, MQuAKECase

    if isinstance(item, ACERequest):
        return item
    if isinstance(item, MQuAKECase):
        questions, answer = _probe_fields(item.probe, index, "probe.")
        facts = tuple(as_request(r.as_dict(), index) for r in item.requested_rewrite)
        return ACERequest(facts, questions, (answer,) * len(questions))
    if isinstance(item, CounterFactCase):
        if item.multihop is None:
            raise EditRequestError(f"request {index}: field 'multihop' is missing (case {item.case_id}); {_MISSING}")
        questions, answer = _probe_fields(item.multihop, index, "multihop.")
        return ACERequest((as_request(item.rewrite.as_dict(), index),), questions, (answer,) * len(questions))
    if isinstance(item, dict):
        rewrites = item.get("requested_rewrite")
        if isinstance(rewrites, list):  # MQuAKE layout
            questions, answer = _probe_fields(item, index, "")
            if not rewrites:
                raise EditRequestError(f"request {index}: field 'requested_rewrite' is an empty list")
            facts = tuple(as_request({"requested_rewrite": r}, index) for r in rewrites)
            return ACERequest(facts, questions, (answer,) * len(questions))
        if "multihop" not in item:
            raise EditRequestError(f"request {index}: field 'multihop' is missing; {_MISSING}")
        questions, answer = _probe_fields(item["multihop"], index, "multihop.")
        return ACERequest((as_request(item, index),), questions, (answer,) * len(questions))
    if isinstance(item, (EditRequest, TokenizedRequest)) or hasattr(item, "prompt"):
        raise EditRequestError(f"request {index}: a single-hop {type(item).__name__} has no field 'multihop_prompts'; "
                               f"{_MISSING}")
    raise EditRequestError(f"request {index}: expected an ACERequest, a MQuAKE or CounterFact case/record, "
                           f"got {type(item).__name__}")


@dataclass(frozen=True)
class ACERows:
    """The requests as the two stages' rows: ``value`` rows (multi-hop prompts and, optionally,
    the facts, at the prompt's last token) and ``query`` rows (the facts at the subject's last
    token). Every row's ``index`` is the ACE request it comes from."""

    requests: tuple[ACERequest, ...]
    value: tuple[TokenizedRequest, ...]
    query: tuple[TokenizedRequest, ...]
    #: per value row: ``"multihop"`` or ``"fact"``
    value_kinds: tuple[str, ...]


def _prepare_one(model, request: EditRequest, fingerprint: str, edit_token: str, index: int, what: str) -> TokenizedRequest:
    try:
        (row,) = prepare_requests(model, [request], fingerprint, edit_token)
    except EditRequestError as err:
        raise EditRequestError(f"request {index}: {what}: {str(err).removeprefix('request 0: ')}") from None
    return dataclasses.replace(row, index=index)


def prepare_ace_requests(model, requests: Iterable, fingerprint: str, value_fact_rows: bool = True) -> ACERows:
    """Validate and tokenise ACE requests (see :func:`as_ace_request`). Errors name the request,
    and the fact or multi-hop prompt at fault."""
    items = [requests] if isinstance(requests, (ACERequest, dict)) else list(requests)
    if not items:
        raise EditRequestError("no edit requests given")
    parsed, value, kinds, query = [], [], [], []
    for index, item in enumerate(items):
        req = as_ace_request(item, index)
        if not req.facts:
            raise EditRequestError(f"request {index}: field 'facts' is empty; ACE needs the single-hop fact(s) it rewrites")
        if not req.multihop_prompts:
            raise EditRequestError(f"request {index}: field 'multihop_prompts' is empty; {_MISSING}")
        if len(req.multihop_answers) != len(req.multihop_prompts):
            raise EditRequestError(f"request {index}: field 'multihop_answers' has {len(req.multihop_answers)} answers "
                                   f"for {len(req.multihop_prompts)} multi-hop prompts (one per prompt)")
        facts = [as_request(f, index) for f in req.facts]
        for j, fact in enumerate(facts):
            query.append(_prepare_one(model, fact, fingerprint, "subject_last", index, f"fact {j}"))
        for j, (prompt, answer) in enumerate(zip(req.multihop_prompts, req.multihop_answers, strict=True)):
            if not isinstance(prompt, str) or not isinstance(answer, str):
                raise EditRequestError(f"request {index}: multi-hop prompt {j}: prompt and answer must be strings, "
                                       f"got {prompt!r} -> {answer!r}")
            subject = next((f.subject for f in facts if f.subject in prompt), None)
            if subject is None:
                raise EditRequestError(f"request {index}: field 'multihop_prompts': prompt {j} ({prompt!r}) mentions "
                                       f"no edited subject ({[f.subject for f in facts]}), so it does not pass through the edit")
            if "{" in prompt or "}" in prompt:
                raise EditRequestError(f"request {index}: field 'multihop_prompts': prompt {j} ({prompt!r}) must be the "
                                       "full question (the subject written out, no braces)")
            hop = EditRequest(prompt.replace(subject, "{}", 1), subject, answer)
            value.append(_prepare_one(model, hop, fingerprint, "prompt_last", index, f"multi-hop prompt {j}"))
            kinds.append("multihop")
        if value_fact_rows:
            for j, fact in enumerate(facts):
                value.append(_prepare_one(model, fact, fingerprint, "prompt_last", index, f"fact {j}"))
                kinds.append("fact")
        for j, prompt in enumerate(req.preserve_prompts):
            if not isinstance(prompt, str) or not prompt.strip() or len(encode_prompts(model.tokenizer, [prompt])[0]) > model.cfg.n_ctx:
                raise EditRequestError(f"request {index}: field 'preserve_prompts': prompt {j} ({prompt!r}) is empty, "
                                       f"not a string or longer than the model's context")
        parsed.append(ACERequest(tuple(facts), tuple(req.multihop_prompts), tuple(req.multihop_answers),
                                 tuple(req.preserve_prompts)))
    check_ace_conflicts(parsed)
    return ACERows(tuple(parsed), tuple(value), tuple(query), tuple(kinds))


def check_ace_conflicts(requests: Sequence[ACERequest]) -> None:
    """Two facts that rewrite the same subject and relation (prompt) to different objects, or
    one multi-hop question given two different answers, conflict — within a request or across
    requests: ACE would keep one of them without a word. Raises :class:`EditRequestError`
    naming both places. The same fact restated by several requests (MQuAKE cases that share a
    hop) agrees with itself and is fine."""
    facts: dict[tuple[str, str], tuple[str, str]] = {}
    answers: dict[str, tuple[str, str]] = {}
    for index, req in enumerate(requests):
        for j, fact in enumerate(req.facts):
            key, where = (fact.subject.strip(), fact.text.strip()), f"request {index} fact {j}"
            if key in facts and facts[key][1] != fact.target_new.strip():
                raise EditRequestError(
                    f"{facts[key][0]} and {where} conflict: both rewrite {fact.text!r} (subject {fact.subject!r}) but to "
                    f"different objects ({facts[key][1]!r} vs {fact.target_new.strip()!r}); give each fact one new object")
            facts.setdefault(key, (where, fact.target_new.strip()))
        for j, (prompt, answer) in enumerate(zip(req.multihop_prompts, req.multihop_answers, strict=True)):
            key, where = prompt.strip(), f"request {index} multi-hop prompt {j}"
            if key in answers and answers[key][1] != answer.strip():
                raise EditRequestError(
                    f"{answers[key][0]} and {where} conflict: the question {prompt!r} is given two new answers "
                    f"({answers[key][1]!r} vs {answer.strip()!r})")
            answers.setdefault(key, (where, answer.strip()))


@torch.no_grad()
def last_token_keys(model, prompts: Sequence[str], layer: int) -> Float[Tensor, "prompt d_mlp"]:
    """The MLP keys (``mlp_post``) of ``layer`` at each prompt's last token (one batched forward)."""
    ids = encode_prompts(model.tokenizer, prompts)
    tokens, lengths = pad_right(ids, model.tokenizer.pad_token_id or 0)
    name = hook_name("mlp_post", layer)
    act = forward_to_layer(model, tokens.to(model.cfg.device), layer + 1, [name])[name]
    return act[torch.arange(len(ids)), (lengths - 1).to(act.device)].float()


# --- layers ------------------------------------------------------------------------------

def choose_layers(model, rows: ACERows, cfg: ACEConfig) -> dict:
    """Query and value layers (see the module docstring), and the pathway rankings they came
    from (``None`` when both are fixed)."""
    out: dict = {"query_source": "config", "value_source": "config", "query_ranking": None, "value_ranking": None}
    query, value = cfg.query_layers, cfg.value_layers
    if query is None or value is None:
        from interp_edit.analysis.pathways import qv_pathways

        prompts = [p for r in rows.requests for p in r.multihop_prompts]
        result = qv_pathways(model, prompts, None, n_value=cfg.pathway_value_neurons, top_pathways=1)
        out.update(query_ranking=result.query_layers, value_ranking=result.value_layers)
        if query is None:
            ranked = [layer for layer in result.query_layers if layer < model.cfg.n_layers - 1]
            query = tuple(sorted(ranked[: cfg.n_query_layers]))
            if not query:
                raise EditConfigError(
                    "field 'query_layers': qv_pathways found no query → value pathway over the requests' multi-hop "
                    "prompts, so no query layer can be chosen; give query_layers= (and value_layers=)")
            out["query_source"] = "pathways"
        if value is None:
            floor = max(query) + 1 if cfg.value_above_query else 0
            ranked = [layer for layer in result.value_layers if layer >= floor]
            value = tuple(sorted(ranked[: cfg.n_value_layers]))
            out["value_source"] = "pathways"
    check_layers(model, query, "query_layers")
    check_layers(model, value, "value_layers")
    out.update(query_layers=tuple(query), value_layers=tuple(value))
    return out


# --- the editor --------------------------------------------------------------------------

def check_ace_items(model, items, config: dict) -> dict:
    """Experiment-level check (the runner calls it once, before any edit): every case must
    carry the hop structure ACE edits along; the first that does not is refused with the data
    set to use."""
    for index, item in enumerate(items):
        try:
            as_ace_request(item, index)
        except EditRequestError as err:
            case = getattr(item, "case_id", None)
            raise EditRequestError(f"ace cannot edit case {case if case is not None else index} of this data set: {err}. "
                                   "Use a data set whose every case has multi-hop questions, e.g. the built-in "
                                   "'toyworld-mquake' (interp-edit evaluate --method ace --data toyworld-mquake)") from None
    return dict(config)


def _merge(deltas: dict[str, LowRankDelta], new: dict[str, LowRankDelta]) -> None:
    """Add ``new`` to ``deltas`` (a layer edited by both stages gets the two factors side by side)."""
    for name, delta in new.items():
        old = deltas.get(name)
        deltas[name] = delta if old is None else LowRankDelta(torch.cat([old.left, delta.left], 1),
                                                              torch.cat([old.right, delta.right], 0))


def ace(model, requests, config: ACEConfig | None = None, *, corpus=None, cache_dir=None, stats=None,
        progress: bool = False, **overrides) -> Edit:
    """One ACE edit of all ``requests`` (see the module docstring). The model is unchanged;
    apply the returned :class:`Edit` with ``edit.apply(model)``. ``edit.info`` records the
    query and value layers, where they came from (``"pathways"`` or ``"config"``), the
    pathway rankings, each stage's target losses and timings.

    >>> case = load_dataset("toyworld-mquake")[0]       # Talvik Corlo born in Pellin, 2-hop probes
    >>> e = ace(model, [case], steps=3, stats_samples=200)
    >>> sorted(e.info)[:3]
    [...]
    >>> with e.applied(model):
    ...     probs = last_token_logits(model, [case.probe.questions[0]]).softmax(-1)
    """
    cfg = resolve(ACEConfig, model, config, overrides)
    for name in ("query_layers", "value_layers"):
        if getattr(cfg, name) is not None:
            check_layers(model, getattr(cfg, name), name)
    fingerprint = model_fingerprint(model)
    rows = prepare_ace_requests(model, requests, fingerprint, cfg.value_fact_rows)
    start = time.perf_counter()
    layers = choose_layers(model, rows, cfg)
    seconds = {"layers": time.perf_counter() - start}
    start = time.perf_counter()
    all_layers = sorted(set(layers["query_layers"]) | set(layers["value_layers"]))
    if cfg.variant == "reference":
        return _reference_edit(model, rows, layers, cfg, fingerprint, seconds, corpus=corpus, cache_dir=cache_dir,
                               stats=stats, progress=progress)
    statistics = editor_statistics(model, cfg, all_layers, corpus=corpus, cache_dir=cache_dir, progress=progress,
                                   stats=stats, method="ACE")
    covs = {layer: s.moment for layer, s in statistics.items()}
    seconds["stats"] = time.perf_counter() - start

    preserve = [p for r in rows.requests for p in r.preserve_prompts]

    def left_factor(weight: float, preserved: bool = False):
        def factor(layer: int, keys: Tensor) -> Tensor:
            matrix = weight * covs[layer].to(keys.device) + keys @ keys.T
            if preserved and preserve and cfg.preserve_weight:
                kept = last_token_keys(model, preserve, layer).double().to(keys.device).T  # [d_mlp, n_p]
                matrix = matrix + cfg.preserve_weight * kept @ kept.T
            # λ = 0 must not be singular; a singular C (thin statistics) is warned about where it is read
            return solve(matrix, keys, f"ACE layer {layer}", near_singular=weight == 0)

        return factor

    stages = {"value": (list(rows.value), layers["value_layers"], left_factor(cfg.value_mom2_update_weight, True)),
              "query": (list(rows.query), layers["query_layers"], left_factor(cfg.query_mom2_update_weight))}
    done = {}
    with scratch_weights(model, [w_out_name(layer) for layer in all_layers]):
        for stage in (("value", "query") if cfg.order == "value_first" else ("query", "value")):
            done[stage] = spread_update(model, stages[stage][0], cfg, stages[stage][1], stages[stage][2])
            for name, delta in done[stage].deltas.items():
                add_low_rank(model, name, delta)  # the next stage sees this one
    value, query = done["value"], done["query"]
    deltas: dict[str, LowRankDelta] = {}
    _merge(deltas, value.deltas)
    _merge(deltas, query.deltas)
    seconds.update({f"value_{k}": v for k, v in value.timings.items()})
    seconds.update({f"query_{k}": v for k, v in query.timings.items()})
    info = {**layers, "value_rows": list(rows.value_kinds), "preserved_prompts": len(preserve), "value_target_nll": value.target_nll,
            "query_target_nll": query.target_nll, "seconds": seconds,
            "stats": provenance_records(statistics)}
    return Edit("ace", deltas, fingerprint, cfg.as_dict(), [r.as_dict() for r in rows.requests], info)


def reference_shares(groups: Sequence[Sequence[int]], split: str = "group") -> list[tuple[int, int, float]]:
    """The code's write order and residual shares: ``(layer, group, share)`` for every layer of
    the flattened ``groups``, share = √(layers left in its group) (``"group"``) or √(layers left
    in the flat list) (``"flat"``).

    >>> reference_shares([(3, 4), (6,)])
    [(3, 0, 1.4142135623730951), (4, 0, 1.0), (6, 1, 1.0)]
    """
    flat = [(layer, g) for g, group in enumerate(groups) for layer in group]
    out = []
    for i, (layer, g) in enumerate(flat):
        left = len(groups[g]) - list(groups[g]).index(layer) if split == "group" else len(flat) - i
        out.append((layer, g, math.sqrt(left)))
    return out


def _reference_edit(model, rows: ACERows, layers: dict, cfg: ACEConfig, fingerprint: str, seconds: dict, *,
                    corpus, cache_dir, stats, progress) -> Edit:
    """``variant="reference"``: the authors' code's editing step (module docstring)."""
    from interp_edit.editing.closed_form import memit_left_factor, raw_values_at_edit_tokens, w_o_name
    from interp_edit.editing.methods.pmet import KEY_SITES, PMETConfig, optimise_pmet_targets, pmet_residual
    from interp_edit.editing.targets import TargetConfig, compute_keys, prefixes_for

    if any(r.preserve_prompts for r in rows.requests):
        raise EditConfigError("field 'variant': the reference variant (the authors' code) has no preserved-prompt term; "
                              "drop the requests' preserve_prompts or use variant='pathways'")
    groups = (tuple(layers["query_layers"]), tuple(layers["value_layers"]))
    if set(groups[0]) & set(groups[1]):
        raise EditConfigError(f"field 'variant': the reference variant edits each layer once, but the query layers "
                              f"{groups[0]} and value layers {groups[1]} share {sorted(set(groups[0]) & set(groups[1]))}")
    flat = [*groups[0], *groups[1]]
    z_layer = flat[-1]
    facts = list(rows.query)
    kinds = ("attn", "mlp") if cfg.update_attention else ("mlp",)
    names = {"attn": w_o_name, "mlp": w_out_name}
    weight = (cfg.query_mom2_update_weight, cfg.value_mom2_update_weight)
    start = time.perf_counter()
    covs, provenance = {}, []
    for kind in kinds:
        site = KEY_SITES[kind]
        given = stats.get(site) if isinstance(stats, dict) and set(stats) <= set(KEY_SITES.values()) else stats
        full = editor_statistics(model, cfg, sorted(flat), site=site, corpus=corpus, cache_dir=cache_dir,
                                 progress=progress, stats=given, method="ACE")
        covs[kind] = {layer: s.moment for layer, s in full.items()}
        provenance += provenance_records(full)
    seconds["stats"] = time.perf_counter() - start
    start = time.perf_counter()
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TargetConfig)}
    pcfg = PMETConfig(**shared, layers=tuple(flat), update_attention=cfg.update_attention)
    prefixes = prefixes_for(model, cfg)
    targets = optimise_pmet_targets(model, facts, z_layer, prefixes, pcfg)
    seconds["targets"] = time.perf_counter() - start
    start = time.perf_counter()
    deltas: dict[str, LowRankDelta] = {}
    shares = reference_shares(groups, cfg.group_split)
    with scratch_weights(model, [names[kind](layer) for layer in flat for kind in kinds]):
        for layer, group, share in shares:
            # the code's compute_ks_parallel: every module's keys before the layer's first write
            keys = {kind: compute_keys(model, facts, layer, prefixes, site=KEY_SITES[kind],
                                       average=cfg.key_average).double().T for kind in kinds}
            for kind in kinds:  # the attention before the FFN, the residual re-read after each write
                current = raw_values_at_edit_tokens(model, facts, z_layer, kind)
                residual = pmet_residual(targets.target(kind).double().to(current.device), current, share)
                left = memit_left_factor(model, covs[kind][layer], weight[group], keys[kind],
                                         f"ACE {kind} layer {layer}")
                delta = LowRankDelta(left.float().cpu(), residual.float().cpu())
                add_low_rank(model, names[kind](layer), delta)
                deltas[names[kind](layer)] = delta
    seconds["update"] = time.perf_counter() - start
    info = {**layers, "variant": "reference", "z_layer": z_layer,
            "shares": [{"layer": layer, "group": ("query", "value")[g], "share": share} for layer, g, share in shares],
            "target_nll": targets.nll.tolist(), "target_steps": targets.steps,
            "target_delta_norms": {k: targets.delta[k].norm(dim=-1).tolist() for k in targets.delta},
            "prefixes": list(prefixes), "seconds": seconds, "stats": provenance}
    return Edit("ace", deltas, fingerprint, cfg.as_dict(), [r.as_dict() for r in rows.requests], info)


__all__ = ["ACEConfig", "ACERequest", "ACERows", "ace", "as_ace_request", "choose_layers", "last_token_keys",
           "prepare_ace_requests", "reference_shares"]
