"""EMMET next to the authors' code (scalable-model-editing/unified-model-editing, execute_emmet),
with reference_compare.py's shims (CPU, our C via layer_stats, our context templates, BOS).
Run locally, never in CI, on a checkout of the authors' code:

    python benchmarks/reference_compare_emmet.py PATH/TO/unified-model-editing
"""
import contextlib
import importlib.util
import io
import re
import sys
from pathlib import Path

import torch

from interp_edit import load_model, to_hf
from interp_edit.editing import EditRequest
from interp_edit.editing.methods.emmet import EMMETConfig, emmet
from interp_edit.editing.targets import prefixes_for
from interp_edit.statistics.keys import second_moments
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
covs = second_moments(model, [0, 1], n_samples=4000, progress=False)
code = rc.cpu_copy(sys.argv[1])
with rc.reference_code(code):
    for name in [m for m in sys.modules if m.split(".")[0] == "emmet"]:
        del sys.modules[name]
    import emmet.compute_z as compute_z
    import emmet.emmet_main as main
    from emmet.emmet_hparams import EMMETHyperParams
    # (no shift_word_positions: this repr_tools counts tokens with tok.encode, which already adds BOS)
    compute_z.nethook = rc.tuple_block_outputs(compute_z.nethook)
    _find = compute_z.find_fact_lookup_idx  # its verbose print indexes the BOS-less ids with the BOS-shifted position
    compute_z.find_fact_lookup_idx = lambda *a, **k: _find(*a, **{**k, "verbose": False})
    main.layer_stats = lambda *a, **k: (rc.FakeStat(covs[int(re.findall(r"\d+", a[2])[0])].to(torch.float64)), None)
    btok = rc.BosOnBatches(tok)
    for layers, lam, mu, nu in (((0,), 100.0, 0.1, 0.0),) if '--debug' in sys.argv else (((0,), 100.0, 0.1, 0.0), ((0,), 100.0, 0.0, 0.0), ((0,), 100.0, 0.1, 5.0), ((0, 1), 100.0, 0.1, 0.0)):
        base = dict(layers=layers, stats_samples=4000, steps=20, lr=0.5, clamp_norm_factor=4.0, mom2_update_weight=lam,
                    emmet_lambda=mu, update_norm_lambda=nu, **rc.MEMIT_REFERENCE)
        for sname, fields in {"bare_nokl": dict(prefixes=(), kl_factor=0.0), "templates6_kl": dict(kl_factor=0.0625)}.items():
            cfg = EMMETConfig.for_model(model, **base, **fields)
            prefixes = prefixes_for(model, cfg)
            hp = rc.memit_hparams_dict(cfg, model.cfg.n_layers, rc.lm_head_name(hf))
            hp.update(calculate_objective_value=False, update_norm_lambda=nu, emmet_lambda=mu)
            hparams = EMMETHyperParams(**hp)
            main.CONTEXT_TEMPLATES_CACHE = [["{}"], [p + " {}" for p in prefixes[1:]]] if len(prefixes) > 1 else [["{}"]]
            main.COV_CACHE.clear()
            with contextlib.redirect_stdout(io.StringIO()):
                deltas = main.execute_emmet(hf, btok, [rc.ref_request(r, i) for i, r in enumerate(requests)], hparams)
            ours = emmet(model, requests, **base, **dict(fields, prefixes=tuple(prefixes[1:])))
            for layer in layers:
                adj_k, resid = deltas[f"transformer.h.{layer}.mlp.c_proj.weight"][:2]
                ref = adj_k.double() @ resid.double().T
                err = rc.relative_error(ours.deltas[f"blocks.{layer}.mlp.W_out"].dense(), ref)
                if "--debug" in sys.argv:
                    d = ours.deltas[f"blocks.{layer}.mlp.W_out"]
                    print("resid err", rc.relative_error(d.right.T, resid), "left err", rc.relative_error(d.left, adj_k),
                          "left norms", d.left.norm(dim=0).tolist(), adj_k.norm(dim=0).tolist(),
                          "resid norms", d.right.norm(dim=1).tolist(), resid.norm(dim=0).tolist())
                print(f"emmet_layers{list(layers)}_lambda{lam}_mu{mu}_nu{nu}_{sname}_L{layer}_rel_dW_err={err:.3e} "
                      f"(templates={len(prefixes)} requests={len(requests)} ref_norm={float(ref.norm()):.4g})", flush=True)
