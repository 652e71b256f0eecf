"""GRACE next to the authors' code (Thartvigsen/GRACE grace/editors/grace.py, GRACE + GRACEAdapter run
unmodified) on the toy model exported with to_hf: the adaptor wraps transformer.h[L].mlp.c_proj (its
output is the MLP output, our hook_mlp_out), warm values, replace_last, the hallucination task's key_id
(the last prompt token). Prints the relative difference of the trained values and of the edited logits.
Run locally, never in CI, on a checkout of the authors' code:

    python benchmarks/reference_compare_grace.py PATH/TO/GRACE
"""
import contextlib
import importlib.util
import io
import sys
import types

import torch

from interp_edit import load_model, to_hf
from interp_edit.editing import EditRequest
from interp_edit.editing.methods.grace import grace
from interp_edit.toyworld import counterfact_records, load_world

torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
spec = importlib.util.spec_from_file_location("grace_ref", f"{sys.argv[1]}/grace/editors/grace.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

model = load_model("toyworld")
records = counterfact_records(load_world())[::7][:4]
requests = [EditRequest(r.prompt, r.subject, r.target_new, r.target_true) for r in records]
for layer, n_iter, lr in ((3, 20, 0.5), (3, 100, 1.0), (1, 50, 0.5)):
    hf, tok = to_hf(model)
    hf.eval()
    config = {"model": {"inner_params": [f"transformer.h[{layer}].mlp.c_proj.weight"]}, "device": "cpu",
              "editor": {"eps": 1.0, "dist_fn": "euc", "replacement": "replace_last", "num_pert": 8, "val_init": "warm",
                         "val_train": "sgd", "eps_expand": "coverage", "n_iter": n_iter, "edit_lr": lr},
              "experiment": {"task": "hallucination"}}
    editor = ref.GRACE(config, types.SimpleNamespace(model=hf, tokenizer=tok))
    for r in requests:
        prompt = tok.encode(r.text)  # BOS first
        target = tok.encode(" " + r.target_new, add_special_tokens=False)
        ids = torch.tensor([prompt + target])
        tokens = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "labels": torch.tensor([[-100] * len(prompt) + target])}
        with contextlib.redirect_stdout(io.StringIO()):
            editor.edit(config, tokens, None)
    adapter = hf.transformer.h[layer].mlp.c_proj
    ours = grace(model, requests, layer=layer, eps=1.0, n_iter=n_iter, lr=lr, replacement="last", value_init="warm")
    hook = ours.hooks[f"layer{layer}"]
    ref_values = adapter.values.detach().double()
    err = float((hook.values.double() - ref_values).norm() / ref_values.norm())
    # edited next-token logits at each prompt, theirs (hallucination key_id = last prompt token) vs ours
    diffs = []
    for r in requests:
        prompt = tok.encode(r.text)
        ids = torch.tensor([prompt])
        with torch.no_grad():
            adapter.key_id = torch.tensor(len(prompt) - 1)
            theirs = hf(input_ids=ids).logits[0, -1].double()
            with ours.applied(model):
                mine = model(ids)[0, -1].double()
        diffs.append(float((mine - theirs).norm() / theirs.norm()))
    print(f"grace_L{layer}_n_iter{n_iter}_lr{lr}_keys ours={len(hook.keys)} ref={len(adapter.keys)} "
          f"rel_value_err={err:.3e} max_rel_logit_err={max(diffs):.3e} (requests={len(requests)})", flush=True)
