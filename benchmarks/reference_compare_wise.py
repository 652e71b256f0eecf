"""WISE next to the authors' code (zjunlp/EasyEdit easyeditor/models/wise/: WISE, WISEAdapter and
utils.tokenize run unmodified) on the toy model exported with to_hf: the adapter wraps
transformer.h[L].mlp.c_proj (W_out), retrieve mode, one side memory (fewer edits than save_freq),
the same requests edited one after another, the same loc prompts, the bare template only, and the
mask seed (np.random.seed before the first edit). Each loc prompt has its edit row's token length
and the only template is '{}', so no row is padded (the code left-pads, and GPT-2 then shifts a
padded row's positions). Prints the relative difference of the trained side memories (W_side − W),
of the router's threshold, and of the next-token logits at edited and unrelated prompts
(routed by each side's own router), in float64 and in float32, and how far our own result moves
when lr changes by about one rounding step (self_sensitivity): SGD at lr 1 with the clamp and the
margins' positive-part selections amplifies rounding over the steps, so long runs in float32
differ as much between two equally valid roundings as between the two implementations. Run locally, never in CI, on a checkout of EasyEdit:

    python benchmarks/reference_compare_wise.py PATH/TO/EasyEdit
    python benchmarks/reference_compare_wise.py PATH/TO/EasyEdit --shards   # save_freq / merge_freq / TIES / retrieval

Shims (loading only): the packages easyeditor, easyeditor.util, easyeditor.models and
easyeditor.models.wise are registered empty (with their real folders as paths) so that WISE.py
and its relative imports load without EasyEdit's __init__ files, which import every editor.
"""
import contextlib
import importlib
import io
import sys
import types

import numpy as np
import torch

from interp_edit import load_model, to_hf
from interp_edit.editing import EditRequest
from interp_edit.editing.methods.wise import wise
from interp_edit.toyworld import counterfact_records, load_world

torch.set_num_threads(1)
root = sys.argv[1]
for name, sub in (("easyeditor", ""), ("easyeditor.util", "/util"), ("easyeditor.models", "/models"),
                  ("easyeditor.models.wise", "/models/wise")):
    module = types.ModuleType(name)
    module.__path__ = [f"{root}/easyeditor{sub}"]
    sys.modules[name] = module
ref = importlib.import_module("easyeditor.models.wise.WISE")
ref_utils = importlib.import_module("easyeditor.models.wise.utils")

records = counterfact_records(load_world())
requests = [EditRequest(r.prompt, r.subject, r.target_new, r.target_true) for r in records[::7][:4]]
model = load_model("toyworld")
hf, tok = to_hf(model)


def length(text):
    return len(tok(text)["input_ids"])


# per request: an unrelated fact (prompt + true answer) of the edit row's token length
pool = [f"{r.prompt.format(r.subject)} {r.target_true}" for r in records[1::5]]
locs = []
for r in requests:
    want = length(f"{r.text} {r.target_new}")
    locs.append(next(t for t in pool if length(t) == want and t not in locs))
unrelated = [r.prompt.format(r.subject) for r in records[3::11][:6]]



def compare_shards():
    """--shards: save_freq 2 / merge_freq 4 (TIES, densities 0.53, weights 1) over 7 and 8 edits: the
    memories saved and merged, the current shard, their floors, and the logits (retrieval among the
    memories, batch 1) at the edited and unrelated prompts. The edited layer's b_out is zeroed in
    both models: the code's memory forward (``F.linear(x, W_mem)``) has no bias, ours adds b_out as
    the current shard's does; and ``F.linear`` is given the Conv1D layout [d_mlp, d_model] of the
    exported GPT-2 (the code's call assumes nn.Linear's [out, in] and fails on GPT-2 otherwise)."""
    layer, n_iter, lr, constraint, (alpha, beta, gamma), act_ratio = 4, 10, 1.0, 0.5, (1.0, 6.0, 4.0), 0.8
    conv1d = types.SimpleNamespace(linear=lambda x, w, b=None: torch.nn.functional.linear(x, w.T, b))
    ref.F = conv1d  # the memory path only: the current shard's forward uses addmm with the bias (GPT-2)
    shard_requests = [EditRequest(r.prompt, r.subject, r.target_new, r.target_true) for r in records[::7][:8]]
    _, tok0 = to_hf(load_model("toyworld"))
    shard_locs = []
    for r in shard_requests:
        want = len(tok0(f"{r.text} {r.target_new}")["input_ids"])
        shard_locs.append(next(t for t in pool if len(tok0(t)["input_ids"]) == want and t not in shard_locs))
    for dtype, count in ((torch.float64, 7), (torch.float64, 8), (torch.float32, 7)):
        model = load_model("toyworld", dtype=dtype)
        with torch.no_grad():
            model.blocks[layer].mlp.b_out.zero_()
        hf, tok = to_hf(model)
        hf = hf.to(dtype).eval()
        tok.padding_side = "left"
        hparams = types.SimpleNamespace(
            alg_name="WISE", model_name="gpt2-toy", device="cpu", inner_params=[f"transformer.h[{layer}].mlp.c_proj.weight"],
            edit_lr=lr, n_iter=n_iter, mask_ratio=0.2, norm_constraint=constraint, alpha=alpha, beta=beta, gamma=gamma,
            act_ratio=act_ratio, save_freq=2, merge_freq=4, merge_alg="ties", objective_optimization="only_label",
            retrieve=True, replay=False, weights=1.0, densities=0.53, batch_size=1, max_length=30)
        reqs, locs_n = shard_requests[:count], shard_locs[:count]
        with contextlib.redirect_stdout(io.StringIO()):
            editor = ref.WISE(model=hf, config=hparams, device="cpu")
            np.random.seed(0)  # each shard's mask is the next draw of numpy's global generator
            for r, loc in zip(reqs, locs_n, strict=True):
                batch = [{"prompt": r.text, "target_new": r.target_new, "loc_prompt": loc}]
                tokens, act_mask, deact_mask = ref_utils.tokenize(batch, tokenizer=tok, device="cpu", context_templates=["{}"],
                                                                  hparams=hparams)
                assert (tokens["attention_mask"] == 1).all()
                editor.edit(config=hparams, tokens=tokens, act_mask=act_mask, deact_mask=deact_mask)
        adapter = editor.get_adapter_layer()
        ours = wise(model, reqs, layer=layer, n_iter=n_iter, lr=lr, norm_constraint=constraint, alpha=alpha, beta=beta,
                    gamma=gamma, act_ratio=act_ratio, prefixes=(), loc_prompts=tuple(locs_n), seed=0, preset="generic",
                    save_freq=2, merge_freq=4)
        hook = ours.hooks[f"layer{layer}"]
        base = adapter.original_layer.weight.detach().double()
        theirs = [(w.detach().double() - base) for w in adapter.memory_weight]
        assert len(theirs) == hook.n_memories, (len(theirs), hook.n_memories)
        mem_err = [float((hook.memories[i].double() - t).norm() / t.norm()) for i, t in enumerate(theirs)]
        cur_t = adapter.new_weight.detach().double() - base
        cur_err = float((hook.delta.double() - cur_t).norm() / cur_t.norm()) if cur_t.norm() > 0 else float(hook.delta.norm())
        their_floors = [a.min_act() for a in adapter.memory_mean_act] + [adapter.editing_mean_act.min_act()]
        our_floors = [*hook.memory_floors, hook.activation_floor]
        floor_err = max(0.0 if a == b or (a == float("inf") and b >= 1e9) else abs(a - b) / abs(b)
                        for a, b in zip(our_floors, their_floors, strict=True))
        got = {}
        handle = adapter.register_forward_hook(lambda mod, args, out, got=got: got.update({"in": args[0], "out": out}))
        diffs, agree, choices = [], 0, []
        texts = [r.text for r in reqs] + unrelated
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]])
            with torch.no_grad():
                their_logits = hf(input_ids=ids).logits[0, -1].double()
                x = got["in"]
                outs = [conv1d.linear(x, w) for w in adapter.memory_weight] + [adapter.new_weight_forward(x)]
                their_choice = next((i for i, o in enumerate(outs) if torch.equal(o, got["out"])), -1)
                with ours.applied(model):
                    mine = model(ids)[0, -1].double()
                _, cache = model.run_with_cache(ids, names_filter=[hook.input_hook, hook.hook_name])
            our_choice = hook.retrieve(cache[hook.input_hook], cache[hook.hook_name])
            our_choice = int(our_choice[0, 0]) if (our_choice == our_choice[0, 0]).all() else None
            agree += our_choice == their_choice
            choices.append(our_choice)
            diffs.append(float((mine - their_logits).norm() / their_logits.norm()))
        handle.remove()
        print(f"wise_shards_{str(dtype)[6:]}_edits{count} memories={hook.n_memories} (ref {len(theirs)}) "
              f"floors={[round(f, 4) for f in our_floors]} "
              f"rel_memory_err={[f'{e:.3e}' for e in mem_err]} rel_current_err={cur_err:.3e} max_rel_floor_err={floor_err:.3e} "
              f"routing_agree={agree}/{len(texts)} choices={choices} max_rel_logit_err={max(diffs):.3e} "
              f"merged_at={ours.info.get('merged_at')}", flush=True)


if "--shards" in sys.argv[2:]:
    compare_shards()
    sys.exit(0)

SETTINGS = (  # layer, n_iter, lr, norm_constraint, (alpha, beta, gamma), act_ratio
    (5, 10, 1.0, 0.5, (1.0, 6.0, 4.0), 0.8),
    (4, 20, 1.0, 1.0, (5.0, 20.0, 10.0), 0.8),
    (3, 10, 0.5, 0.3, (2.0, 8.0, 4.0), 0.88),
    (4, 40, 2.0, 2.0, (1.0, 6.0, 4.0), 0.8),  # the toyworld preset: 160 SGD steps in all
)
# float64 (both sides; the trajectories are the same up to rounding) and float32 (the code's dtype,
# where rounding is amplified over the steps: the norms of near-zero differences, m⁺'s selections
# and the clamp's bounds)
for dtype, (layer, n_iter, lr, constraint, (alpha, beta, gamma), act_ratio) in [(d, s) for d in (torch.float64, torch.float32)
                                                                                for s in SETTINGS]:
    model = load_model("toyworld", dtype=dtype)
    hf, tok = to_hf(model)
    hf = hf.to(dtype).eval()
    tok.padding_side = "left"  # EasyEdit's editor sets it for WISE
    hparams = types.SimpleNamespace(
        alg_name="WISE", model_name="gpt2-toy", device="cpu", inner_params=[f"transformer.h[{layer}].mlp.c_proj.weight"],
        edit_lr=lr, n_iter=n_iter, mask_ratio=0.2, norm_constraint=constraint, alpha=alpha, beta=beta, gamma=gamma,
        act_ratio=act_ratio, save_freq=500, merge_freq=1000, merge_alg="ties", objective_optimization="only_label",
        retrieve=True, replay=False, weights=1.0, densities=0.53, batch_size=1, max_length=30)
    with contextlib.redirect_stdout(io.StringIO()):
        editor = ref.WISE(model=hf, config=hparams, device="cpu")
        np.random.seed(0)  # the mask is drawn at the first edit from numpy's global generator
        for r, loc in zip(requests, locs, strict=True):
            batch = [{"prompt": r.text, "target_new": r.target_new, "loc_prompt": loc}]
            tokens, act_mask, deact_mask = ref_utils.tokenize(batch, tokenizer=tok, device="cpu", context_templates=["{}"],
                                                              hparams=hparams)
            assert (tokens["attention_mask"] == 1).all(), "a padded row: pick loc prompts of the edit row's length"
            editor.edit(config=hparams, tokens=tokens, act_mask=act_mask, deact_mask=deact_mask)
    adapter = editor.get_adapter_layer()
    ours = wise(model, requests, layer=layer, n_iter=n_iter, lr=lr, norm_constraint=constraint, alpha=alpha, beta=beta,
                gamma=gamma, act_ratio=act_ratio, prefixes=(), loc_prompts=tuple(locs), seed=0, preset="generic")
    hook = ours.hooks[f"layer{layer}"]
    # how far rounding alone moves our own result: lr changed by about one rounding step
    nudged = wise(model, requests, layer=layer, n_iter=n_iter, lr=lr * (1 + (1e-12 if dtype == torch.float64 else 1e-7)),
                  norm_constraint=constraint, alpha=alpha, beta=beta, gamma=gamma, act_ratio=act_ratio, prefixes=(),
                  loc_prompts=tuple(locs), seed=0, preset="generic").hooks[f"layer{layer}"].delta.double()
    sensitivity = float((nudged - hook.delta.double()).norm() / hook.delta.double().norm())
    theirs = (adapter.new_weight.detach() - adapter.original_layer.weight.detach()).double()
    err = float((hook.delta.double() - theirs).norm() / theirs.norm())
    their_floor = adapter.editing_mean_act.min_act()
    floor_err = abs(hook.activation_floor - their_floor) / max(abs(their_floor), 1e-12)
    diffs, agree = [], 0
    texts = [r.text for r in requests] + unrelated
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            theirs_logits = hf(input_ids=ids).logits[0, -1].double()
            with ours.applied(model):
                mine = model(ids)[0, -1].double()
            _, cache = model.run_with_cache(ids, names_filter=[hook.input_hook, hook.hook_name])
            original = adapter.original_layer(cache[hook.input_hook])
            their_route = float(ref.euc(original, adapter.new_weight_forward(cache[hook.input_hook]), hparams, infer=True).mean()) \
                >= adapter.editing_mean_act.min_act() * act_ratio
        agree += bool(hook.routed(cache[hook.input_hook], cache[hook.hook_name]).all()) == their_route
        diffs.append(float((mine - theirs_logits).norm() / theirs_logits.norm()))
    print(f"wise_{str(dtype)[6:]}_L{layer}_n_iter{n_iter}_lr{lr}_c{constraint}_margins{alpha:g}/{beta:g}/{gamma:g} "
          f"rel_side_memory_err={err:.3e} rel_floor_err={floor_err:.3e} (ours {hook.activation_floor:.4f}, "
          f"ref {their_floor:.4f}) routing_agree={agree}/{len(texts)} max_rel_logit_err={max(diffs):.3e} "
          f"self_sensitivity={sensitivity:.1e} steps={ours.info['steps']} (requests={len(requests)})", flush=True)
