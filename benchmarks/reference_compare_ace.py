"""ACE next to the authors' code (yjywdzh/ACE, ``ace/edit/ace``: ``execute_ace`` with
``compute_zs`` / ``compute_ks``), with reference_compare.py's and reference_compare_pmet.py's
shims. Our side is ``ace(..., variant="reference")`` with the same two layer groups (query,
value), λ, C, context templates and target settings; the code gets the cases' single-hop facts
(``requested_rewrite``), as its ``evaluate_filterqa_layer.py`` passes them, all 4 in one call.
Run locally, never in CI:

    python benchmarks/reference_compare_ace.py PATH/TO/ACE --pmet PATH/TO/PMET/edit [--debug]

Prints ``key=value`` lines with the relative ΔW error ‖ΔW_ours − ΔW_ref‖ / ‖ΔW_ref‖ per
setting, layer and written weight. The code runs unmodified apart from these shims at its
boundaries:

- support packages: the ACE checkout holds only its ``ace`` package; the ``rome`` (``repr_tools``,
  ``layer_stats``) and ``util`` (``nethook``, ``generate``, ``globals``, ``hparams``) packages it
  imports come from PMET's ``edit`` folder (xpq-tech/PMET, which it builds on; ``--pmet``),
  copied next to it into a temporary folder;
- ``ace_main`` / ``compute_ks`` / ``compute_zs`` import ``.ace_hparams`` but the checkout's file is
  ``ace_hyper.py``: the copy also holds it as ``ace_hparams.py``;
- reference_compare.py's: CPU instead of CUDA, our C via ``layer_stats`` (float32, as the code's
  ``get_cov`` keeps it; our side gets the same rounded C), our context templates in the code's
  cache, BOS on padded batches and word positions + 1, transformers-5 block outputs as tuples;
- GPT-2's square attention ``Conv1D``: ``upd_matrix_match_shape`` cannot orient it, so the update
  (always [out, in]) is transposed to the ``Conv1D`` [in, out] layout (as in reference_compare_pmet.py);
- ``execute_ace`` flattens ``hparams.layers`` in place, so each call gets a fresh hparams object
  (the ``flat`` settings give it the flat list, which is what every call after the first in one
  process sees).
"""
import argparse
import contextlib
import dataclasses
import importlib.util
import io
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from interp_edit import load_model, to_hf
from interp_edit.data import load_dataset
from interp_edit.editing.methods.ace import ACEConfig, ace, prepare_ace_requests
from interp_edit.editing.targets import prefixes_for
from interp_edit.statistics.keys import key_statistics

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
spec = importlib.util.spec_from_file_location("reference_compare", HERE / "reference_compare.py")
rc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rc)

parser = argparse.ArgumentParser()
parser.add_argument("ace", help="the ACE checkout (holding ace/edit/ace)")
parser.add_argument("--pmet", required=True, help="PMET's edit folder (rome/, util/)")
parser.add_argument("--debug", action="store_true")
args = parser.parse_args()

torch.set_num_threads(1)
model = load_model("toyworld")
hf, tok = to_hf(model)
cases = list(load_dataset("toyworld-mquake"))[::7][:4]
SAMPLES = 4000
STATS_LAYERS = tuple(range(model.cfg.n_layers - 1))


def rounded(stats):  # the code's get_cov keeps C as float32
    return {layer: dataclasses.replace(s, moment=s.moment.float().double()) for layer, s in stats.items()}


stats = {site: rounded(key_statistics(model, STATS_LAYERS, site=site, n_samples=SAMPLES, progress=False))
         for site in ("mlp_post", "z")}


def hparams_dict(cfg: ACEConfig, layers) -> dict:
    mlp, attn = "transformer.h.{}.mlp.c_proj", "transformer.h.{}.attn.c_proj"
    return {"layers": layers, "layer_selection": "all", "fact_token": "subject_last",
            "v_num_grad_steps": cfg.steps, "v_lr": cfg.lr, "v_loss_layer": model.cfg.n_layers - 1,
            "v_weight_decay": cfg.weight_decay, "clamp_norm_factor": cfg.clamp_norm_factor, "kl_factor": cfg.kl_factor,
            "mom2_adjustment": True, "mom2_update_weight": cfg.value_mom2_update_weight, "nll_loss_factor": 1.0,
            # GPT-J / Qwen3 hparams: attention out_proj as rewrite_module_tmp, the FFN in rewrite_module_tmps;
            # NeoX's: the FFN in both (deduplicated by the code)
            "rewrite_module_tmp": attn if cfg.update_attention else mlp, "rewrite_module_tmps": [mlp],
            "layer_module_tmp": "transformer.h.{}", "mlp_module_tmp": mlp, "attn_module_tmp": attn,
            "ln_f_module": "transformer.ln_f", "lm_head_module": rc.lm_head_name(hf), "mom2_dataset": "wikipedia",
            "mom2_n_samples": cfg.stats_samples, "mom2_dtype": "float32"}


def code_tree() -> Path:
    """PMET's edit folder with the ACE package beside it, in a temporary folder (CPU copy)."""
    merged = Path(tempfile.mkdtemp(prefix="ace_ref_")) / "edit"
    shutil.copytree(args.pmet, merged, ignore=shutil.ignore_patterns(".git", "__pycache__", "data", "results"))
    shutil.copytree(Path(args.ace) / "ace" / "edit" / "ace", merged / "ace", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(merged / "ace" / "ace_hyper.py", merged / "ace" / "ace_hparams.py")
    code = rc.cpu_copy(str(merged))
    for file in code.rglob("*.py"):  # PMET's "cuda:0" / "cuda:1"
        text = file.read_text(encoding="utf-8")
        new = text.replace('"cuda:0"', '"cpu"').replace('"cuda:1"', '"cpu"')
        if new != text:
            file.write_text(new, encoding="utf-8")
    return code


rc.PACKAGES = (*rc.PACKAGES, "ace", "pmet")
code = code_tree()
with rc.reference_code(code):
    import ace.ace_main as main
    import ace.compute_zs as compute_zs
    import rome.repr_tools as repr_tools
    from ace.ace_hparams import aceHyperParams

    rc.shift_word_positions(repr_tools)
    compute_zs.nethook = rc.tuple_block_outputs(compute_zs.nethook)
    _find = compute_zs.find_fact_lookup_idx  # its verbose print indexes BOS-less ids with the shifted position
    compute_zs.find_fact_lookup_idx = lambda *a, **k: _find(*a, **{**k, "verbose": False})
    main.find_fact_lookup_idx = compute_zs.find_fact_lookup_idx

    def fake_layer_stats(*a, **k):
        site = "z" if ".attn." in a[2] else "mlp_post"
        return rc.FakeStat(stats[site][int(re.findall(r"\d+", a[2])[0])].moment)

    main.layer_stats = fake_layer_stats
    main.upd_matrix_match_shape = lambda matrix, shape: matrix.T  # GPT-2's Conv1D: [in, out]
    btok = rc.BosOnBatches(tok)
    Q, V = (0, 1), (3, 4)
    settings = {
        "groups_bare_nokl": dict(prefixes=(), kl_factor=0.0),
        "groups_templates6_kl": dict(kl_factor=0.0625),
        "groups_bare_gptj_opt": dict(prefixes=(), kl_factor=1.0, lr=0.2, steps=30, clamp_norm_factor=0.75),
        "flat_templates6_kl": dict(kl_factor=0.0625, group_split="flat"),
        "groups_templates6_kl_mlp_only": dict(kl_factor=0.0625, update_attention=False),
        "groups_q012_v4_templates6_kl": dict(kl_factor=0.0625, query_layers=(0, 1, 2), value_layers=(4,)),
    }
    if args.debug:
        settings = dict(list(settings.items())[:1])
    base = dict(variant="reference", query_layers=Q, value_layers=V, stats_samples=SAMPLES, steps=20, lr=0.5,
                clamp_norm_factor=4.0, value_mom2_update_weight=100.0, query_mom2_update_weight=100.0,
                **rc.MEMIT_REFERENCE)
    for sname, fields in settings.items():
        cfg = ACEConfig.for_model(model, **{**base, **fields})
        prefixes = prefixes_for(model, cfg)
        groups = [list(cfg.query_layers), list(cfg.value_layers)]
        layers = groups if cfg.group_split == "group" else groups[0] + groups[1]
        hparams = aceHyperParams(**hparams_dict(cfg, layers))
        main.CONTEXT_TEMPLATES_CACHE = [["{}"], [p + " {}" for p in prefixes[1:]]] if len(prefixes) > 1 else [["{}"]]
        main.COV_CACHE.clear()
        facts = prepare_ace_requests(model, cases, "ref").query
        ref_requests = [rc.ref_request(f.request, i) for i, f in enumerate(facts)]
        with contextlib.redirect_stdout(io.StringIO()) as log:
            deltas = main.execute_ace(hf, btok, ref_requests, hparams)
        flat = groups[0] + groups[1]
        given = {site: {layer: by_layer[layer] for layer in flat} for site, by_layer in stats.items()}
        ours = ace(model, cases, **{**base, **fields, "prefixes": tuple(prefixes[1:])}, stats=given)
        if args.debug:
            print(log.getvalue()[-3000:])
            print("ours target steps", ours.info["target_steps"], "nll", ours.info["target_nll"])
        for layer in flat:
            pairs = [("mlp.W_out", "mlp.c_proj")] + ([("attn.W_O", "attn.c_proj")] if cfg.update_attention else [])
            for mine, theirs in pairs:
                ref = deltas[f"transformer.h.{layer}.{theirs}.weight"].detach().double()
                err = rc.relative_error(ours.delta_matrix(f"blocks.{layer}.{mine}", model), ref)
                print(f"ace_groups{groups}_{sname}_L{layer}_{mine}_rel_dW_err={err:.3e} "
                      f"(templates={len(prefixes)} requests={len(ref_requests)} ref_norm={float(ref.norm()):.4g})",
                      flush=True)
