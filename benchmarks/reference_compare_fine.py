"""FiNE next to the authors' code (opanhw/FiNE, an EasyEdit fork: ``easyeditor/models/fine/``
``apply_fine_to_model`` / ``execute_fine`` / ``get_top_neurons`` and the activation-recording
``easyeditor/modified_models/modeling_llama2._LlamaForCausalLM``, all run unmodified) on a tiny
randomly initialised Llama (``tiny_hf_model("llama", vocab_size=len(tok))``: d_model 64, 3 layers, d_mlp 128, the toy
world's tokenizer), saved with ``save_pretrained``: the code gets ``_LlamaForCausalLM.from_pretrained``
of that folder, our side ``load_model`` of the same folder without weight processing (so ``W_U`` is
the code's ``lm_head`` and ``W_out`` its ``down_proj``). 4 toy-world requests whose new targets are
1, 2, 3 and 1 tokens long. Per setting (top_k / neuron_num, frozen layers / last_layer, lr; 50
steps, α 1, β 10, γ 0.1, stop at p > 0.9, the code's hparams) prints ``key=value`` lines:

* whether the selected neuron sets (layer, index) are identical (per request, the union over
  the target tokens; and the per-token top-k lists);
* the relative error ‖ΔW_ours − ΔW_code‖ / ‖ΔW_code‖ over every ``down_proj`` / ``W_out`` and of
  the edited next-token logits at the 4 prompts (largest over the requests);

for single edits (one ``apply_fine_to_model`` call per request on the unedited model, undone), for
one call with all 4 requests (the code's ``batch_edit`` path: every request on the unedited
model, the δ summed; ours ``sequential=False``, and our default ``sequential=True`` for contrast)
and for 4 requests one after another (one call per request, kept: the code's editor with
``keep_original_weight=False``; ours ``sequential=True``, the default),
each for: ours at its defaults (float32 δ) vs the code (bfloat16 δ); ours with
``delta_dtype="bfloat16"`` vs the code; ours (float32 δ) vs the code with its one
``dtype=torch.bfloat16`` made float32 (a labelled variant, not the code as published); and our named
deviations (``neuron_slots="union"``, ``repetition="first"``) vs the code with float32 δ.

Run locally, never in CI, on a checkout of opanhw/FiNE:

    python benchmarks/reference_compare_fine.py PATH/TO/FiNE

Shims (at the code's boundaries only): ``torch.Tensor.cuda`` returns the tensor itself (CPU);
the packages ``easyeditor``, ``easyeditor.util``, ``easyeditor.models``, ``easyeditor.models.fine``
and ``easyeditor.modified_models`` are registered empty (with their real folders as paths) so that
EasyEdit's ``__init__`` files, which import every editor, are not run; ``LLAMA_INPUTS_DOCSTRING`` /
``_CONFIG_FOR_DOC``, which transformers 5 no longer defines, are given to
``transformers.models.llama.modeling_llama`` for ``modeling_llama2``'s docstring decorators;
``fine_main.get_top_neurons`` is wrapped to record the neurons it returns (unchanged); the
code's prints are silenced. The "float32 δ" variant compiles ``fine_main.py`` with
``dtype=torch.bfloat16`` replaced by ``dtype=torch.float32`` (nothing else).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys
import tempfile
import types
from pathlib import Path

import torch

from interp_edit import load_model
from interp_edit.adapter import model_fingerprint
from interp_edit.adapter.tiny import tiny_hf_model
from interp_edit.editing import EditRequest, fine
from interp_edit.editing.methods.fine import select_neurons
from interp_edit.editing.requests import prepare_requests
from interp_edit.toyworld import counterfact_records, load_world

torch.set_num_threads(1)


def install_shims(root: str):
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # CPU
    import transformers.models.llama.modeling_llama as llama

    for name, value in (("LLAMA_INPUTS_DOCSTRING", ""), ("_CONFIG_FOR_DOC", "LlamaConfig")):
        if not hasattr(llama, name):
            setattr(llama, name, value)
    for name, sub in (("easyeditor", ""), ("easyeditor.util", "/util"), ("easyeditor.models", "/models"),
                      ("easyeditor.models.fine", "/models/fine"), ("easyeditor.modified_models", "/modified_models")):
        module = types.ModuleType(name)
        module.__path__ = [f"{root}/easyeditor{sub}"]
        sys.modules[name] = module
    fine_main = importlib.import_module("easyeditor.models.fine.fine_main")
    hparams = importlib.import_module("easyeditor.models.fine.fine_hparams").FINEHyperParams
    llama2 = importlib.import_module("easyeditor.modified_models.modeling_llama2")
    # the float32-δ variant: the same source with its one bfloat16 made float32
    path = Path(root) / "easyeditor/models/fine/fine_main.py"
    source = path.read_text()
    assert source.count("dtype=torch.bfloat16") == 1
    f32 = types.ModuleType("easyeditor.models.fine.fine_main_f32")
    f32.__package__ = "easyeditor.models.fine"
    f32.__file__ = str(path)
    sys.modules[f32.__name__] = f32
    exec(compile(source.replace("dtype=torch.bfloat16", "dtype=torch.float32"), str(path), "exec"), f32.__dict__)
    return fine_main, f32, hparams, llama2._LlamaForCausalLM


SELECTED: list = []


def record_neurons(module):
    real = module.get_top_neurons

    def recorded(*args, **kwargs):
        out = real(*args, **kwargs)
        SELECTED.append(out.clone())
        return out

    module.get_top_neurons = recorded


def quiet():
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def make_requests():
    records = counterfact_records(load_world())[::7][:4]
    others = [r.target_true for r in records]
    targets = [records[0].target_new, f"{records[1].target_new} {others[2]}",
               f"{records[2].target_new} {others[3]} {others[0]}", records[3].target_new]
    return [EditRequest(r.prompt, r.subject, t) for r, t in zip(records, targets, strict=True)]


def down_projs(hf):
    return torch.stack([layer.mlp.down_proj.weight.detach().T.clone() for layer in hf.model.layers])  # [layer, d_mlp, d_model]


def ours_dense(edit, n_layers, d_mlp, d_model):
    out = torch.zeros(n_layers, d_mlp, d_model, dtype=torch.float64)
    for layer in range(n_layers):
        name = f"blocks.{layer}.mlp.W_out"
        if name in edit.deltas:
            out[layer] = edit.deltas[name].dense(d_mlp).double()
    return out


def code_edit(module, hf, tok, requests, hp, one_by_one=False):
    """The code's edit of ``requests`` in one apply_fine_to_model call (``one_by_one``: one call
    per request, each kept: its editor with ``keep_original_weight=False``); (ΔW, per-request top
    neurons [token, k, 2], edited next-token logits at every prompt); hf restored after."""
    before = down_projs(hf)
    start = len(SELECTED)
    reqs = [{"prompt": r.prompt, "subject": r.subject, "target_new": r.target_new} for r in requests]
    with quiet():
        for batch in ([[r] for r in reqs] if one_by_one else [reqs]):
            module.apply_fine_to_model(hf, tok, batch, hp, copy=False, return_orig_weights=True, keep_original_weight=False)
    after = down_projs(hf)
    logits = next_logits_hf(hf, tok, ALL_REQUESTS)
    with torch.no_grad():
        for layer, weight in zip(hf.model.layers, before, strict=True):
            layer.mlp.down_proj.weight.copy_(weight.T)
    return (after - before).double(), SELECTED[start:], logits


def next_logits_hf(hf, tok, requests):
    with torch.no_grad():
        return [hf(input_ids=torch.tensor([tok.encode(r.text, add_special_tokens=True)])).logits[0, -1] for r in requests]


def next_logits_ours(model, edit, requests):
    with torch.no_grad(), edit.applied(model):
        return [model(torch.tensor([model.tokenizer.encode(r.text, add_special_tokens=True)]))[0, -1] for r in requests]


def neuron_sets(top):
    return sorted({tuple(n) for n in top.reshape(-1, 2).tolist()})


def compare(tag, model, shape, ours, theirs_dw, theirs_top, theirs_logits, ours_selected):
    n_layers, d_mlp, d_model = shape
    dw = rel(ours_dense(ours, n_layers, d_mlp, d_model), theirs_dw)
    logit = max(rel(a, b) for a, b in zip(next_logits_ours(model, ours, ALL_REQUESTS), theirs_logits, strict=True))
    same = [sorted(map(tuple, mine)) == neuron_sets(top) for mine, top in zip(ours_selected, theirs_top, strict=True)]
    return dw, logit, same


ALL_REQUESTS: list = []


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("fine_root")
    parser.add_argument("--init", type=float, default=0.2, help="std of the random weights (tiny_hf_model's init)")
    parser.add_argument("--export-dir", default=None)
    args = parser.parse_args()
    fine_main, fine_f32, FINEHyperParams, LlamaClass = install_shims(args.fine_root)
    record_neurons(fine_main)
    record_neurons(fine_f32)

    tok = load_model("toyworld").tokenizer
    folder = Path(args.export_dir or tempfile.mkdtemp(prefix="random_llama_"))
    torch.manual_seed(0)
    tiny_hf_model("llama", vocab_size=len(tok), init=args.init).save_pretrained(folder)
    tok.save_pretrained(folder)
    with quiet():
        hf = LlamaClass.from_pretrained(folder, torch_dtype=torch.float32).eval()
    model = load_model(str(folder), tokenizer=tok, fold_ln=False, center_writing_weights=False, center_unembed=False,
                       fold_value_biases=False)
    n_layers, d_mlp, d_model = model.cfg.n_layers, model.cfg.d_mlp, model.cfg.d_model
    shape = (n_layers, d_mlp, d_model)
    w_err = max(float((model.blocks[i].mlp.W_out.detach() - hf.model.layers[i].mlp.down_proj.weight.detach().T).abs().max())
                for i in range(n_layers))
    requests = make_requests()
    ALL_REQUESTS[:] = requests
    probe = torch.tensor([tok.encode(requests[0].text, add_special_tokens=True)])
    with torch.no_grad():
        load_err = rel(model(probe)[0], hf(input_ids=probe).logits[0])
    print(f"random_llama folder={folder} init={args.init} d_model={d_model} d_mlp={d_mlp} n_layers={n_layers} "
          f"W_out_vs_down_proj_max_abs={w_err:.1e} logits_rel_err_unedited={load_err:.1e} "
          f"target_tokens={[len(tok.encode(' ' + r.target_new, add_special_tokens=False)) for r in requests]}", flush=True)

    settings = [  # (top_k, n_frozen, lr)
        (5, 1, 1e-3),   # the code's GPT-J / Llama-3 lr, 1 of 3 layers frozen
        (5, 1, 5e-3),   # the code's Llama-2 lr
        (10, 0, 2e-2),  # every layer, a larger lr (reaches the early stop)
    ]
    for top_k, n_frozen, lr in settings:
        hp = FINEHyperParams(alg_name="FINE", model_name="tiny-llama", device=0, epochs=50, lr=lr, gamma=0.1, beta=10,
                             alpha=1, neuron_num=top_k, early_stop_prob=0.9, last_layer=n_frozen,
                             rewrite_module_tmp="model.layers.{}.mlp.down_proj", model_parallel=False)
        common = dict(top_k=top_k, n_frozen=n_frozen, lr=lr, steps=50, kl_weight=1.0, repetition_weight=10.0,
                      norm_weight=0.1, early_stop_prob=0.9, n_prefixes=0)
        base = f"fine_k{top_k}_frozen{n_frozen}_lr{lr:g}"
        variants = [  # (name, code module, our overrides)
            ("default_vs_code", fine_main, {}),
            ("bf16_vs_code", fine_main, {"delta_dtype": "bfloat16"}),
            ("default_vs_code_f32", fine_f32, {}),
            ("union_vs_code_f32", fine_f32, {"neuron_slots": "union"}),
            ("repfirst_vs_code_f32", fine_f32, {"repetition": "first"}),
        ]
        for name, module, extra in variants:
            # single edits
            dws, lgs, sames, steps = [], [], [], []
            for r in requests:
                theirs_dw, top, theirs_logits = code_edit(module, hf, tok, [r], hp)
                ours = fine(model, [r], **common, **extra)
                dw, lg, same = compare(name, model, shape, ours, theirs_dw, top, theirs_logits, ours.info["selected"])
                dws.append(dw)
                lgs.append(lg)
                sames += same
                steps.append(ours.info["steps"][0])
            print(f"{base}_{name}_single_neurons_identical={all(sames)} ({sum(sames)}/{len(sames)}) "
                  f"rel_dW_err_max={max(dws):.3e} rel_logit_err_max={max(lgs):.3e} our_steps={steps}", flush=True)
            if name in ("union_vs_code_f32", "repfirst_vs_code_f32"):
                continue
            # four requests in one call (the code's batch_edit path)
            theirs_dw, top, theirs_logits = code_edit(module, hf, tok, requests, hp)
            for seq in (False, True):
                ours = fine(model, requests, **common, **extra, sequential=seq)
                dw, lg, same = compare(name, model, shape, ours, theirs_dw, top, theirs_logits, ours.info["selected"])
                print(f"{base}_{name}_batch4_sequential{seq}_neurons_identical={all(same)} ({sum(same)}/{len(same)}) "
                      f"rel_dW_err={dw:.3e} rel_logit_err_max={lg:.3e}", flush=True)
            # four requests one after another (the code: one call per request, kept), ours sequential=True
            theirs_dw, top, theirs_logits = code_edit(module, hf, tok, requests, hp, one_by_one=True)
            ours = fine(model, requests, **common, **extra, sequential=True)
            dw, lg, same = compare(name, model, shape, ours, theirs_dw, top, theirs_logits, ours.info["selected"])
            print(f"{base}_{name}_sequential4_neurons_identical={all(same)} ({sum(same)}/{len(same)}) "
                  f"rel_dW_err={dw:.3e} rel_logit_err_max={lg:.3e}", flush=True)
        # per-token lists (order within each token's top-k) on the single edits, float32 code
        same_lists = []
        for r in requests:
            _, top, _ = code_edit(fine_f32, hf, tok, [r], hp)
            treq = prepare_requests(model, [r], model_fingerprint(model))[0]
            sel = select_neurons(model, treq, top_k, list(range(n_layers - n_frozen)))
            mine = torch.stack([sel.layers, sel.neurons], -1)
            same_lists.append(torch.equal(mine, top[0].to(mine.dtype)))
        print(f"{base}_per_token_topk_lists_identical={all(same_lists)} ({sum(same_lists)}/{len(same_lists)})", flush=True)


if __name__ == "__main__":
    main()
