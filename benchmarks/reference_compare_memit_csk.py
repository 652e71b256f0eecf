"""MEMIT-CSK next to the authors' code (anshitag/memit_csk: ``memit.memit_main.execute_memit``
with its ``compute_z`` / ``compute_ks`` and ``dsets.csk.CommonSenseDataset``, run unmodified),
with reference_compare.py's shims. Run locally, never in CI, on a checkout of the repository
(a copy is patched, the checkout is not):

    .venv/bin/python benchmarks/reference_compare_memit_csk.py PATH/TO/memit_csk [--layers 1,2] [--debug]

4 compound statements of ``load_dataset("toyworld-csk")`` (4 people, "{} speaks Belmaric and
works as a" -> "farmer": subject, verb and object spans) are written to a JSON file in the
code's data format (``requested_rewrite`` with the filled prompt) and read back with the code's
``CommonSenseDataset(noise_token=...)``, which puts ``{}`` at the edited word. Both sides edit
the 4 as one batch at each edit token the code supports (``{subject,verb,object}_{first,last}``;
its ``"last"`` fact token raises "This is definitely bugged", so ``prompt_last`` has no
counterpart), and the relative ΔW error ‖ΔW_ours − ΔW_ref‖ / ‖ΔW_ref‖ is printed per setting and
layer as ``key=value`` lines.

Shims, each at the code's boundary (as reference_compare.py's and reference_compare_pmet.py's):

- device: the checkout is copied with ``"cuda"`` / ``.cuda()`` replaced by the CPU;
- statistics: ``layer_stats`` returns our key second moment C (float64; the code's ``get_cov``
  keeps it as float32, as it does for MEMIT);
- context templates: ``CONTEXT_TEMPLATES_CACHE`` holds the templates our side generated, in
  the code's ``x + ". {}"`` form;
- BOS: the toy tokenizer adds BOS to padded batches (model inputs) only, and
  ``repr_tools.get_words_idxs_in_templates`` returns its positions + 1;
- ``find_fact_lookup_idx`` is called with ``verbose=False``: its print decodes
  ``tok(sentence)["input_ids"][idx]`` of the BOS-less ids at the BOS-shifted position, which is
  past the end when the edited word ends the sentence (a verb at the end of the prompt);
- transformers 5 returns a tensor from a GPT-2 block: ``compute_z``'s ``TraceDict`` sees
  ``(hidden,)``.

Settings (λ 100, 20 steps at lr 0.5, weight decay 0.5, clamp 4 unless stated; our side with
MEMIT's reference semantics, ``reference_compare.MEMIT_REFERENCE``, and the code's CSK ones,
``CSK_REFERENCE``): ``bare_nokl`` (the bare prompt, KL 0), ``templates6_kl`` (the code's 5 + 1
templates, KL 0.0625, the code's ``"{} is a:"`` essence prompt filled with the edited word) and
``published`` (the same with the published gpt2-xl.json's clamp 0.75),
``templates6_kl_max_prob0.3`` (the code's optional ``max_prob`` stop, which its
``evaluate_csk.py --max_prob`` sets as an attribute of the hparams). The last rows repeat
``templates6_kl`` with our former essence semantics (``"{} is a"`` with the subject only, no KL
at a verb or object token), the toy preset's.
"""
import contextlib
import importlib.util
import io
import json
import re
import sys
import tempfile
from pathlib import Path

import torch

from interp_edit import load_model, to_hf
from interp_edit.data import load_dataset
from interp_edit.editing import EditRequest, memit_csk
from interp_edit.editing.methods.memit_csk import MEMITCSKConfig
from interp_edit.editing.targets import prefixes_for
from interp_edit.statistics.keys import second_moments

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("reference_compare", HERE / "reference_compare.py")
rc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rc)

#: the code's CSK semantics on top of MEMIT's: its KL prompt "{} is a:" holds the edited word
CSK_REFERENCE = dict(essence_templates=("{} is a:",), essence_word="edit_span")
#: ours before following the code (the toy preset keeps them): MEMIT's "{} is a", subject only
CSK_LEGACY = dict(essence_templates=("{} is a",), essence_word="subject")
TOKENS = ("subject_last", "subject_first", "verb_last", "verb_first", "object_last", "object_first")


def main() -> None:
    torch.set_num_threads(1)
    path = sys.argv[1]
    debug = "--debug" in sys.argv
    layers = (1, 2)
    if "--layers" in sys.argv:
        layers = tuple(int(x) for x in sys.argv[sys.argv.index("--layers") + 1].split(","))
    samples = 4000
    model = load_model("toyworld")
    hf, tok = to_hf(model)
    dataset = load_dataset("toyworld-csk", tokenizer=model.tokenizer, model=model)
    cases = [c for c in dataset if c.kind == "compound"][:4]
    requests = [EditRequest(c.rewrite.prompt, c.rewrite.subject, c.rewrite.target_new, c.rewrite.target_true,
                            verb=c.rewrite.verb, object=c.rewrite.object) for c in cases]
    records = [{"case_id": i, "requested_rewrite": {
        "prompt": r.text, "subject": r.subject, "verb": r.verb, "object": r.object,
        "target_new": {"str": r.target_new}, "target_true": {"str": r.target_true}}} for i, r in enumerate(requests)]
    data_file = Path(tempfile.mkdtemp(prefix="csk_data_")) / "edit.json"
    data_file.write_text(json.dumps(records))
    covs = second_moments(model, list(layers), n_samples=samples, progress=False)
    print(json.dumps({"requests": [r.text + " -> " + r.target_new for r in requests], "layers": list(layers)}))

    code = rc.cpu_copy(path)
    with rc.reference_code(code):
        import dsets.csk as csk
        import memit.compute_z as compute_z
        import memit.memit_main as main_mod
        import rome.repr_tools as repr_tools
        from memit.memit_hparams import MEMITHyperParams

        rc.shift_word_positions(repr_tools)
        compute_z.nethook = rc.tuple_block_outputs(compute_z.nethook)
        _find = compute_z.find_fact_lookup_idx
        compute_z.find_fact_lookup_idx = lambda *a, **k: _find(*a, **{**k, "verbose": False})
        main_mod.layer_stats = lambda *a, **k: rc.FakeStat(covs[int(re.findall(r"\d+", a[2])[0])].double())
        btok = rc.BosOnBatches(tok)
        base = dict(layers=layers, stats_samples=samples, steps=20, lr=0.5, clamp_norm_factor=4.0,
                    mom2_update_weight=100.0, **rc.MEMIT_REFERENCE)
        settings = {
            "bare_nokl": dict(prefixes=(), kl_factor=0.0, **CSK_REFERENCE),
            "templates6_kl": dict(kl_factor=0.0625, **CSK_REFERENCE),
            "published": dict(kl_factor=0.0625, clamp_norm_factor=0.75, **CSK_REFERENCE),
            "templates6_kl_max_prob0.3": dict(kl_factor=0.0625, max_prob=0.3, **CSK_REFERENCE),
            "templates6_kl_legacy_essence": dict(kl_factor=0.0625, **CSK_LEGACY),
        }
        tokens = TOKENS[:1] if debug else TOKENS
        for edit_token in tokens:
            word, where = edit_token.rsplit("_", 1)
            with contextlib.redirect_stdout(io.StringIO()):
                ref_requests = [{"case_id": r["case_id"], **r["requested_rewrite"]}
                                for r in csk.CommonSenseDataset(str(data_file), noise_token=word)]
            for name, fields in settings.items():
                cfg = MEMITCSKConfig.for_model(model, **{**base, **fields})
                prefixes = prefixes_for(model, cfg)
                hp = rc.memit_hparams_dict(cfg, model.cfg.n_layers, rc.lm_head_name(hf))
                hp["fact_token"] = edit_token
                hparams = MEMITHyperParams(**hp)
                if cfg.max_prob is not None:  # the code's optional field (evaluate_csk.py --max_prob sets it so)
                    hparams.max_prob = cfg.max_prob
                main_mod.CONTEXT_TEMPLATES_CACHE = [["{}"], [p + " {}" for p in prefixes[1:]]] if len(prefixes) > 1 else [["{}"]]
                main_mod.COV_CACHE.clear()
                with contextlib.redirect_stdout(io.StringIO()) as log:
                    deltas = main_mod.execute_memit(hf, btok, ref_requests, hparams, word)
                ours = memit_csk(model, requests, edit_token=edit_token, **{**base, **fields, "prefixes": tuple(prefixes[1:])})
                if debug:
                    print(log.getvalue()[-3000:])
                    print("ours nll", ours.info["target_nll"], "positions", ours.info["edit_positions"])
                for layer in layers:
                    adj_k, resid = deltas[f"transformer.h.{layer}.mlp.c_proj.weight"]
                    ref = adj_k.double() @ resid.double().T  # [d_mlp, d_model], as W_out
                    err = rc.relative_error(ours.deltas[f"blocks.{layer}.mlp.W_out"].dense(), ref)
                    print(f"memit_csk_{edit_token}_{name}_L{layer}_rel_dW_err={err:.3e} "
                          f"(templates={len(prefixes)} requests={len(requests)} ref_norm={float(ref.norm()):.4g})", flush=True)


if __name__ == "__main__":
    main()
