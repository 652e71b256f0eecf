"""UltraEdit next to the authors' code (XiaojieGu/UltraEdit: ``editor/ultraedit.py`` ULTRAEDIT,
``nets.py`` RunningMeanStd, ``util.py`` TracerDict, ``data/zsre.py`` / ``data/base.py`` for the
tuples, ``model.py`` make_model) on the toy model exported with ``to_hf`` and saved to a temporary
folder. Two sequential turns of edits (the code's ``sequential_valid`` loop body: ``cache``,
``predict_param_shifts``, ``edit_model``) next to two ``ultraedit`` calls sharing one
``UltraEditState`` with each edit applied before the next; prints the relative ΔW difference per
setting, turn and edited ``c_proj`` / ``W_out``. Run locally, never in CI, on a checkout of the
authors' code:

    .venv/bin/python benchmarks/reference_compare_ultraedit.py PATH/TO/UltraEdit

The code runs unmodified. Shims, at loading only: ``omegaconf``, ``hydra`` and ``nltk`` are
stand-in modules when not installed (the code imports them; ``DictConfig`` is only a type
annotation there, nltk and hydra are never called on this path), ``wandb`` likewise; the code's
hydra config is an attribute dictionary with the code's own field names; the model and the
toy tokenizer (which puts BOS first, as the code's Llama tokenizer does) are loaded by the
code's ``make_model`` / ``AutoTokenizer`` from the saved folder; the requests go through the
code's ``ZSREDataset`` (a temporary JSON file of zsRE rows) and its ``collate_fn``. Each setting
runs twice: as written (float32 throughout) and with the code's one ``torch.linalg.solve`` in
float64 (``reference_compare.float64_linalg``), to tell its float32 solve from the method.
"""
import importlib.util
import json
import math
import sys
import tempfile
import types
from pathlib import Path

import torch

from interp_edit import load_model, to_hf
from interp_edit.editing import EditRequest
from interp_edit.editing.methods.ultraedit import RunningMeanStd, UltraEditState, ultraedit, ultraedit_update
from interp_edit.toyworld import counterfact_records, load_world

torch.set_num_threads(1)
for name in ("omegaconf", "hydra", "nltk", "wandb"):
    try:
        __import__(name)
    except ImportError:
        stub = types.ModuleType(name)
        stub.DictConfig = dict
        stub.log = lambda *a, **k: None
        sys.modules[name] = stub
sys.path.insert(0, sys.argv[1])
import editor.ultraedit as ultra_module  # noqa: E402
from data.zsre import ZSREDataset  # noqa: E402  (the authors' code)
from editor.ultraedit import ULTRAEDIT  # noqa: E402
from model import make_model  # noqa: E402

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("reference_compare", HERE / "reference_compare.py")
rc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rc)


class Config(dict):
    """The hydra config's attribute access."""

    def __getattr__(self, key):
        return self[key]

    def __setattr__(self, key, value):
        self[key] = value


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


model = load_model("toyworld")
hf, tok = to_hf(model)
folder = Path(tempfile.mkdtemp(prefix="ultraedit_ref_"))
hf.save_pretrained(folder / "model")
tok.save_pretrained(folder / "model")
records = [r for r in counterfact_records(load_world())[::5] if r.relation_id in ("born_in", "profession", "speaks")]
worst = {"float32": 0.0, "float64": 0.0}
settings = [  # (token, lr, layers, requests per turn, tuple_size)
    ("ans", 1e-3, (1, 2, 3, 4), 8, 4),
    ("mask", 1.5e-3, (1, 2, 3, 4), 8, 4),
    ("ans", 1e-6, (3,), 9, 3),
    ("mask", 1e-6, (0, 5), 12, 4),
]
for (token, lr, layers, n_edits, tuple_size), linalg in [(s, a) for s in settings for a in ("float32", "float64")]:
    # float64: the code's torch.linalg.solve run in float64 (rc.float64_linalg), to tell its float32 solve
    # from the method; everything else in the code stays float32
    ultra_module.torch = torch if linalg == "float32" else rc.float64_linalg()
    turns = [records[i * n_edits : (i + 1) * n_edits] for i in range(2)]
    modules = [f"transformer.h.{layer}.mlp.c_proj" for layer in layers]
    config = Config(
        model=Config(name_or_path=str(folder / "model"), name="toy", class_name="GPT2LMHeadModel", half=False,
                     edit_modules=modules),
        editor=Config(name="ultraedit", lr=lr, batch_size=128, token=token, cache_dir=str(folder / "cache")),
        dataset=Config(name="zsre", n_edits=n_edits, batch_size=tuple_size, num_seq=2),
        num_seq=2, editor_device="cpu", model_device="cpu")
    ref_model = make_model(config.model)
    editor = ULTRAEDIT(config, ref_model)
    state, applied = UltraEditState(), []
    on_their_rows = RunningMeanStd(model.cfg.d_mlp + model.cfg.d_model)  # our statistics fed the code's cached rows
    for turn, batch in enumerate(turns):
        path = folder / f"zsre_{turn}.json"
        path.write_text(json.dumps([{"src": r.prompt.format(r.subject), "rephrase": r.prompt.format(r.subject),
                                     "ans": r.target_new, "loc": "nq question: who", "loc_ans": "x"} for r in batch]))
        dataset = ZSREDataset(config.dataset, str(path), editor.tok, "cpu")
        tuples = dataset.collate_fn([dataset[i] for i in range(len(dataset))])
        editor.cache(tuples["edit_tuples"])
        shifts = editor.predict_param_shifts()
        cache = Path(config.editor.cache_dir) / f"toy_zsre_ultraedit_{n_edits}_2"
        rows = {m: [(torch.load(cache / f"{m}_{i}_keys.pth"), torch.load(cache / f"{m}_{i}_values_grad.pth"))
                    for i in range(len(tuples["edit_tuples"]))] for m in range(len(modules))}
        for i in range(len(tuples["edit_tuples"])):
            for m in range(len(modules)):
                on_their_rows.update(torch.cat(rows[m][i], -1))
        editor.edit_model(shifts, False)
        requests = [EditRequest(r.prompt, r.subject, r.target_new, r.target_true) for r in batch]
        ours = ultraedit(model, requests, layers=layers, lr=lr, token=token, tuple_size=tuple_size, state=state)
        applied.append(ours.apply(model))
        for layer, module in zip(layers, modules, strict=True):
            err = rel(ours.delta_matrix(f"blocks.{layer}.mlp.W_out", model), shifts[module])
            worst[linalg] = max(worst[linalg], err)
            # the formula (our RunningMeanStd and solve, float64) on the code's own cached keys and gradients:
            # vs the code's ΔW, what is left is the code's float32 arithmetic; vs ours, the inputs (the keys and
            # gradients of the TransformerLens forward vs the Hugging Face one)
            keys = torch.cat([k for k, _ in rows[modules.index(module)]]).double()
            grads = torch.cat([g for _, g in rows[modules.index(module)]]).double()
            k_hat, g_hat = on_their_rows.normalise(torch.cat([keys, grads], -1)).split([model.cfg.d_mlp, model.cfg.d_model], -1)
            left, right = ultraedit_update(keys, -lr * k_hat.pow(2).sum(-1, keepdim=True) * g_hat, 1.0)
            same_rows = rel(left @ right, shifts[module])
            inputs_only = rel(ours.delta_matrix(f"blocks.{layer}.mlp.W_out", model), left @ right)
            print(f"ultraedit_{linalg}solve_token{token}_lr{lr:g}_layers{list(layers)}_n{n_edits}_tuple{tuple_size}_turn{turn + 1}"
                  f"_L{layer}_rel_dW_err={err:.3e} formula_on_code_rows={same_rows:.1e} "
                  f"ours_vs_formula_on_code_rows={inputs_only:.1e} (rows={ours.info['rows']} "
                  f"ref_norm={float(shifts[module].norm()):.4g})", flush=True)
        ref_stat = editor.lifelong_normalizer[str((model.cfg.d_mlp, model.cfg.d_model))]
        ours_stat = state.stats[(model.cfg.d_mlp, model.cfg.d_model)]
        print(f"  normaliser turn{turn + 1}: n {int(ref_stat.n.item())} vs {ours_stat.n}, mean rel "
              f"{rel(ours_stat.mean, ref_stat.mean):.2e}, std rel {rel(ours_stat.std, ref_stat.std):.2e}", flush=True)
    for e in reversed(applied):
        e.undo(model)
assert all(math.isfinite(w) for w in worst.values())
print(" ".join(f"worst_rel_dW_err_{k}solve={v:.3e}" for k, v in worst.items()))
