"""KN next to the authors' code (zjunlp/EasyEdit easyeditor/models/kn/: apply_kn_to_model and its
knowledge_neurons package run unmodified) on the toy model exported with to_hf, model_name
"gpt2-toy" (EasyEdit's GPT-2 branch: it patches transformer.h[l].mlp.c_fc, the pre-GELU value, so
ours runs with activation="pre"; deviation (a) of kn.py, measured once more with ours at its
default "post"). One-token targets (the toy world's), so deviation (b) (teacher forcing) and (c)
(old_scale on a multi-token answer) do not arise. Per setting (steps, batch_size,
adaptive_threshold) and dtype (float64, float32), prints as key=value lines:

* the attribution scores of every layer's neurons (the code's get_scores vs kn_attribution) on
  each request's prompt and true target, relative difference (largest over the requests);
* whether the selected neuron sets are identical, single edits (apply_kn_to_model per request
  on the unedited model, undone by the code's own unpatch_fn) and four requests edited one after
  another (apply_kn_to_model per request, kept; ours: one kn call, deviation (d));
* the relative difference of the edited W_out / c_proj rows (ΔW) and of the edited next-token
  logits at the prompts;
* refine=True over the prompt and its five paraphrases (p=0.4): the code's get_refined_neurons
  called directly (apply_kn_to_model passes it the prompt alone), neuron sets and ΔW not compared
  (the code's edit path cannot be given paraphrases).

In float64 two floors are ours, not the method's: kn_attribution computes in float32 (``.float()``
on the activation and the logits; with those casts made no-ops on float64 tensors the attribution
difference measured 1.9e-15 instead of 3.5e-6), and kn stores its SparseRowDelta values in float32
(our ΔW equals the code's float64 ΔW rounded to float32: both differ from it by 2.873e-08 on the
first request).

Run locally, never in CI, on a checkout of EasyEdit:

    python benchmarks/reference_compare_kn.py PATH/TO/easyeditor-parent

Shims (loading only): the packages easyeditor, easyeditor.util, easyeditor.models and
easyeditor.models.kn are registered empty (with their real folders as paths) so that kn_main and
its relative imports load without EasyEdit's __init__ files, which import every editor; the toy
tokenizer puts BOS first on prompts (the toy model's convention, as our prompt ids) and its
``encode`` adds no special tokens (as GPT-2's tokenizer, which the code calls on the target);
KnowledgeNeurons.get_refined_neurons is wrapped to record the neurons it returns (unchanged);
the code's prints and progress bars are silenced.
"""
import contextlib
import importlib
import io
import sys
import types

import torch

from interp_edit import load_model, to_hf
from interp_edit.editing import EditRequest
from interp_edit.editing.methods.kn import kn, kn_attribution
from interp_edit.prompts import encode_target
from interp_edit.toyworld import counterfact_records, load_world

torch.set_num_threads(1)
root = sys.argv[1]
for name, sub in (("easyeditor", ""), ("easyeditor.util", "/util"), ("easyeditor.models", "/models"),
                  ("easyeditor.models.kn", "/models/kn")):
    module = types.ModuleType(name)
    module.__path__ = [f"{root}/easyeditor{sub}"]
    sys.modules[name] = module
kn_main = importlib.import_module("easyeditor.models.kn.kn_main")
KNHyperParams = importlib.import_module("easyeditor.models.kn.kn_hparams").KNHyperParams
KnowledgeNeurons = kn_main.KnowledgeNeurons

SELECTED = []
_refined = KnowledgeNeurons.get_refined_neurons


def recorded(self, *args, **kwargs):
    out = _refined(self, *args, **kwargs)
    SELECTED.append(sorted(tuple(n) for n in out))
    return out


KnowledgeNeurons.get_refined_neurons = recorded


class GPT2Encode:
    """The toy tokenizer with GPT-2's ``encode`` (no special tokens); calls put BOS first."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, **kwargs):
        return self._tok(text, **kwargs)

    def encode(self, text, **kwargs):
        return self._tok.encode(text, add_special_tokens=False, **kwargs)


records = counterfact_records(load_world())[::7][:4]
requests = [EditRequest(r.prompt, r.subject, r.target_new, r.target_true, paraphrases=tuple(r.paraphrase_prompts))
            for r in records]


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def quiet():
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def ref_edit(hf, tok, r, steps, batch_size, thr):
    hp = KNHyperParams(lr_scale=1.0, n_toks=1, model_name="gpt2-toy", refine=False, batch_size=batch_size, steps=steps,
                       adaptive_threshold=thr, p=0.4, device="cpu", alg_name="KN")
    request = {"prompt": r.text, "target_new": " " + r.target_new, "ground_truth": " " + r.target_true}
    with quiet():
        _, unpatch = kn_main.apply_kn_to_model(hf, tok, [request], hp)
    return SELECTED[-1], unpatch


def weights(hf, n_layers):
    return [hf.transformer.h[layer].mlp.c_proj.weight.detach().clone() for layer in range(n_layers)]


def delta_rel(ours, before, after, n_layers, d_mlp):
    mine = torch.stack([ours.deltas[f"blocks.{layer}.mlp.W_out"].dense(d_mlp) if f"blocks.{layer}.mlp.W_out" in ours.deltas
                        else torch.zeros_like(before[layer]) for layer in range(n_layers)])
    theirs = torch.stack(after) - torch.stack(before)
    return rel(mine, theirs)


def logits_rel(model, hf, tok, ours, reqs):
    diffs = []
    for r in reqs:
        ids = torch.tensor([tok(r.text)["input_ids"]])
        with torch.no_grad():
            theirs = hf(input_ids=ids).logits[0, -1]
            with ours.applied(model):
                mine = model(ids)[0, -1]
        diffs.append(rel(mine, theirs))
    return max(diffs)


SETTINGS = ((20, 20, 0.2), (20, 10, 0.1), (10, 5, 0.3))  # steps, batch_size, adaptive_threshold (EasyEdit gpt2-xl first)
for dtype in (torch.float64, torch.float32):
    dname = str(dtype).split(".")[-1]
    model = load_model("toyworld", dtype=dtype)
    hf, raw_tok = to_hf(model)
    hf = hf.to(dtype).eval()
    tok = GPT2Encode(raw_tok)
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    layers = list(range(n_layers))
    ref_kn = KnowledgeNeurons(hf, tok, model_type="gpt2", device="cpu")
    for steps, batch_size, thr in SETTINGS:
        tag = f"kn_{dname}_steps{steps}_bs{batch_size}_thr{thr}"
        # 1. attribution scores on the unedited model
        score_errs = []
        for r in requests:
            prompt_ids = tok(r.text)["input_ids"]
            true_ids = encode_target(raw_tok, r.target_true, r.text)
            assert list(true_ids) == tok.encode(" " + r.target_true)
            theirs = ref_kn.get_scores(r.text, " " + r.target_true, batch_size=batch_size, steps=steps, pbar=False)
            mine = kn_attribution(model, prompt_ids, true_ids, layers, steps=steps, batch_size=batch_size, activation="pre")
            score_errs.append(rel(mine, theirs))
        print(f"{tag}_attr_rel_err_max={max(score_errs):.3e}", flush=True)
        # 2. single edits, each on the unedited model
        same, dw_errs, lg_errs, n_neurons = [], [], [], []
        for r in requests:
            before = weights(hf, n_layers)
            theirs_neurons, unpatch = ref_edit(hf, tok, r, steps, batch_size, thr)
            after = weights(hf, n_layers)
            ours = kn(model, [r], steps=steps, batch_size=batch_size, adaptive_threshold=thr, activation="pre")
            mine_neurons = sorted(tuple(n) for n in ours.info["neurons"][0])
            same.append(mine_neurons == theirs_neurons)
            n_neurons.append(len(theirs_neurons))
            dw_errs.append(delta_rel(ours, before, after, n_layers, d_mlp))
            lg_errs.append(logits_rel(model, hf, tok, ours, [r]))
            unpatch()
            assert all(torch.equal(a, b) for a, b in zip(before, weights(hf, n_layers), strict=True))
        print(f"{tag}_single_neurons_identical={all(same)} ({sum(same)}/{len(same)}; ref counts {n_neurons})", flush=True)
        print(f"{tag}_single_rel_dW_err_max={max(dw_errs):.3e}", flush=True)
        print(f"{tag}_single_rel_logit_err_max={max(lg_errs):.3e}", flush=True)
        # 3. four requests one after another (the code: one call per request, edits kept)
        before = weights(hf, n_layers)
        theirs_sets, unpatches = [], []
        for r in requests:
            neurons, unpatch = ref_edit(hf, tok, r, steps, batch_size, thr)
            theirs_sets.append(neurons)
            unpatches.append(unpatch)
        after = weights(hf, n_layers)
        ours = kn(model, requests, steps=steps, batch_size=batch_size, adaptive_threshold=thr, activation="pre")
        mine_sets = [sorted(tuple(n) for n in ns) for ns in ours.info["neurons"]]
        print(f"{tag}_sequential{len(requests)}_neurons_identical={mine_sets == theirs_sets} "
              f"(ref counts {[len(s) for s in theirs_sets]})", flush=True)
        print(f"{tag}_sequential{len(requests)}_rel_dW_err={delta_rel(ours, before, after, n_layers, d_mlp):.3e}", flush=True)
        print(f"{tag}_sequential{len(requests)}_rel_logit_err_max={logits_rel(model, hf, tok, ours, requests):.3e}", flush=True)
        for unpatch in reversed(unpatches):
            unpatch()
        assert all(torch.equal(a, b) for a, b in zip(before, weights(hf, n_layers), strict=True))
        # 4. refine over the prompt and its paraphrases (the code's get_refined_neurons, called directly)
        same, counts = [], []
        for r in requests:
            with quiet():
                ref_kn.get_refined_neurons([r.text, *r.paraphrases], " " + r.target_true, p=0.4, batch_size=batch_size,
                                           steps=steps, coarse_adaptive_threshold=thr, refine=True)
            ours = kn(model, [r], steps=steps, batch_size=batch_size, adaptive_threshold=thr, activation="pre",
                      refine=True, p=0.4)
            same.append(sorted(tuple(n) for n in ours.info["neurons"][0]) == SELECTED[-1])
            counts.append(len(SELECTED[-1]))
        print(f"{tag}_refine_p0.4_neurons_identical={all(same)} ({sum(same)}/{len(same)}; ref counts {counts})", flush=True)
    # deviation (a): ours at its default activation="post" against the code's c_fc (pre-GELU) neurons
    steps, batch_size, thr = SETTINGS[0]
    jaccard = []
    for r in requests:
        theirs, unpatch = ref_edit(hf, tok, r, steps, batch_size, thr)
        unpatch()
        mine = {tuple(n) for n in kn(model, [r], steps=steps, batch_size=batch_size, adaptive_threshold=thr).info["neurons"][0]}
        jaccard.append(len(mine & set(theirs)) / len(mine | set(theirs)))
    print(f"kn_{dname}_steps{steps}_bs{batch_size}_thr{thr}_activation_post_vs_ref_neuron_jaccard="
          f"{','.join(f'{j:.2f}' for j in jaccard)}", flush=True)
