"""PMET next to the authors' code (xpq-tech/PMET, ``edit/pmet``: ``execute_pmet`` with
``compute_zs`` / ``compute_ks``), with reference_compare.py's shims (CPU, our C via layer_stats,
our context templates, BOS on padded batches and word positions + 1, block outputs as tuples).
Run locally, never in CI, on a checkout of the code's ``edit`` folder (a copy is patched, the
checkout is not):

    python benchmarks/reference_compare_pmet.py PATH/TO/PMET/edit [--debug]

Shims on top of reference_compare.py's: the code also hard-codes ``"cuda:0"`` / ``"cuda:1"``
(replaced by the CPU in the copy, as ``"cuda"``); its ``get_cov`` casts C to float32, so our side
gets the same float32-rounded C; its ``upd_matrix_match_shape`` is written for ``Linear`` weights
(GPT-J, GPT-NeoX) and cannot tell the orientation of GPT-2's square attention ``Conv1D``: the
update (always [out, in]) is transposed to the ``Conv1D`` [in, out] layout.
"""
import contextlib
import dataclasses
import importlib.util
import io
import re
import sys
from pathlib import Path

import torch

from interp_edit import load_model, to_hf
from interp_edit.editing import EditRequest
from interp_edit.editing.methods.pmet import PMETConfig, pmet
from interp_edit.editing.targets import prefixes_for
from interp_edit.statistics.keys import key_statistics
from interp_edit.toyworld import counterfact_records, load_world

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
spec = importlib.util.spec_from_file_location("reference_compare", HERE / "reference_compare.py")
rc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rc)

torch.set_num_threads(1)
model = load_model("toyworld")
hf, tok = to_hf(model)
records = counterfact_records(load_world())[::7][:4]
requests = [EditRequest(r.prompt, r.subject, r.target_new, r.target_true) for r in records]
LAYERS = (0, 1)
STATS_LAYERS = (0, 1, 2)
SAMPLES = 4000


def rounded(stats):  # the code's get_cov keeps C as float32
    return {layer: dataclasses.replace(s, moment=s.moment.float().double()) for layer, s in stats.items()}


stats = {site: rounded(key_statistics(model, STATS_LAYERS, site=site, n_samples=SAMPLES, progress=False)) for site in ("mlp_post", "z")}


def hparams_dict(cfg: PMETConfig, attention: bool) -> dict:
    mlp, attn = "transformer.h.{}.mlp.c_proj", "transformer.h.{}.attn.c_proj"
    return {"layers": list(cfg.layers), "layer_selection": "all", "fact_token": "subject_last",
            "v_num_grad_steps": cfg.steps, "v_lr": cfg.lr, "v_loss_layer": model.cfg.n_layers - 1,
            "v_weight_decay": cfg.weight_decay, "clamp_norm_factor": cfg.clamp_norm_factor, "kl_factor": cfg.kl_factor,
            "mom2_adjustment": True, "mom2_update_weight": cfg.mom2_update_weight, "nll_loss_factor": cfg.nll_loss_factor,
            "rewrite_module_tmp": mlp, "rewrite_module_tmps": [attn, mlp] if attention else [mlp],
            "layer_module_tmp": "transformer.h.{}", "mlp_module_tmp": mlp, "attn_module_tmp": attn,
            "ln_f_module": "transformer.ln_f", "lm_head_module": rc.lm_head_name(hf), "mom2_dataset": "wikipedia",
            "mom2_n_samples": cfg.stats_samples, "mom2_dtype": "float32"}


code = rc.cpu_copy(sys.argv[1])
for file in code.rglob("*.py"):  # the code's "cuda:0" / "cuda:1" (reference_compare replaces "cuda" only)
    text = file.read_text(encoding="utf-8")
    new = text.replace('"cuda:0"', '"cpu"').replace('"cuda:1"', '"cpu"')
    if new != text:
        file.write_text(new, encoding="utf-8")
with rc.reference_code(code):
    for name in [m for m in sys.modules if m.split(".")[0] in ("pmet", "rome", "util", "dsets")]:
        del sys.modules[name]
    import pmet.compute_zs as compute_zs
    import pmet.pmet_main as main
    import rome.repr_tools as repr_tools
    from pmet.pmet_hparams import PMETHyperParams

    rc.shift_word_positions(repr_tools)  # this repr_tools counts tokens with tok(list): no BOS
    compute_zs.nethook = rc.tuple_block_outputs(compute_zs.nethook)
    _find = compute_zs.find_fact_lookup_idx  # its verbose print indexes the BOS-less ids with the BOS-shifted position
    compute_zs.find_fact_lookup_idx = lambda *a, **k: _find(*a, **{**k, "verbose": False})
    main.find_fact_lookup_idx = compute_zs.find_fact_lookup_idx

    def fake_layer_stats(*args, **kwargs):
        site = "z" if ".attn." in args[2] else "mlp_post"
        return rc.FakeStat(stats[site][int(re.findall(r"\d+", args[2])[0])].moment)

    main.layer_stats = fake_layer_stats
    main.upd_matrix_match_shape = lambda matrix, shape: matrix.T  # GPT-2's Conv1D: [in, out]
    btok = rc.BosOnBatches(tok)
    settings = {
        "bare_nokl": dict(prefixes=(), kl_factor=0.0),
        "templates6_kl": dict(kl_factor=0.0625),
        "templates6_kl1_attn": dict(kl_factor=1.0, update_attention=True),
        "bare_lr0.2_steps30": dict(prefixes=(), kl_factor=1.0, lr=0.2, steps=30, clamp_norm_factor=0.75),
        "templates6_kl_layers012": dict(kl_factor=0.0625, layers=(0, 1, 2)),
    }
    if "--debug" in sys.argv:
        settings = dict(list(settings.items())[:1])
    base = dict(layers=LAYERS, stats_samples=SAMPLES, steps=20, lr=0.5, clamp_norm_factor=4.0, mom2_update_weight=100.0,
                **rc.MEMIT_REFERENCE)
    for sname, fields in settings.items():
        cfg = PMETConfig.for_model(model, **{**base, **fields})
        prefixes = prefixes_for(model, cfg)
        hparams = PMETHyperParams(**hparams_dict(cfg, cfg.update_attention))
        main.CONTEXT_TEMPLATES_CACHE = [["{}"], [p + " {}" for p in prefixes[1:]]] if len(prefixes) > 1 else [["{}"]]
        main.COV_CACHE.clear()
        with contextlib.redirect_stdout(io.StringIO()) as log:
            deltas = main.execute_pmet(hf, btok, [rc.ref_request(r, i) for i, r in enumerate(requests)], hparams)
        given = {site: {layer: by_layer[layer] for layer in cfg.layers} for site, by_layer in stats.items()}
        ours = pmet(model, requests, **{**base, **fields, "prefixes": tuple(prefixes[1:])}, stats=given)
        if "--debug" in sys.argv:
            print(log.getvalue()[-3000:])
            print("ours target steps", ours.info["target_steps"], "nll", ours.info["target_nll"])
        for layer in cfg.layers:
            pairs = [("mlp.W_out", "mlp.c_proj")] + ([("attn.W_O", "attn.c_proj")] if cfg.update_attention else [])
            for mine, theirs in pairs:
                ref = deltas[f"transformer.h.{layer}.{theirs}.weight"].double()
                err = rc.relative_error(ours.delta_matrix(f"blocks.{layer}.{mine}", model), ref)
                print(f"pmet_layers{list(cfg.layers)}_{sname}_L{layer}_{mine}_rel_dW_err={err:.3e} "
                      f"(templates={len(prefixes)} requests={len(requests)} ref_norm={float(ref.norm()):.4g})", flush=True)
