"""ROME, MEMIT and AlphaEdit next to their authors' code, on the same model and inputs.

Runs the original code of kmeng01/rome, kmeng01/memit and jianghoucheng/AlphaEdit (local
checkouts given by path; nothing is downloaded) on the toy-world model exported with
``interp_edit.to_hf`` (a ``GPT2LMHeadModel``), next to ``rome`` / ``memit`` / ``AlphaEditor``
with the same settings, the same context templates and the same key statistics, and prints
the relative ΔW error ‖ΔW_ours − ΔW_ref‖ / ‖ΔW_ref‖ per method, setting and edited weight as
``key=value`` lines. Usage:

    .venv/bin/python benchmarks/reference_compare.py --rome ../rome --memit ../memit --alphaedit ../AlphaEdit
        [--model toyworld|random-gpt2] [--export-dir DIR] [--kernels fused|transformer_lens]

``--model random-gpt2``: a randomly initialised GPT-2 (``tiny_hf_model("gpt2", vocab_size=len(tok), size=...)``: weights
N(0, init²) with ``--gpt2-init`` (0.2 by default; with it the keys are so large that no
eigenvalue of C lies below AlphaEdit's hard-coded 2e-2, so AlphaEdit's update is exactly 0 on
both sides; ``--gpt2-init 0.02``, GPT-2's own initializer_range, leaves a null space), norm gains U(0.5, 1.5), non-zero biases; the toy world's tokenizer) is saved with
``save_pretrained`` to ``--export-dir`` (a temporary folder by default); the reference code gets
``GPT2LMHeadModel.from_pretrained`` of that folder and our side ``load_model`` of the same folder
with no weight processing, so both edit the same ``c_proj`` / ``W_out``; C comes from the toy
world's training-style text on both sides (the same texts as the toy model's default corpus).

The reference code runs unmodified apart from these shims at its boundaries (each one a
property of this environment, not of the algorithm):

- device: the checkout is copied to a temporary folder with ``"cuda"`` / ``.cuda()`` replaced
  by the CPU (the code hard-codes CUDA);
- statistics: ``layer_stats`` returns our key second moment C (the code would stream
  Wikipedia); it is handed over in float64 unless ``--ref-cov-dtype float32`` (the code's
  ``mom2_dtype``);
- context templates: the code's template caches are filled with the templates our side
  generated (sampling is random on both sides), in the code's ``x + ". {}"`` form;
- BOS: the toy model needs BOS first; for ROME / MEMIT, whose code assumes GPT-2's tokenizer
  (no BOS), the tokenizer adds BOS to padded batches (model inputs) only, not to the pieces the
  code measures token counts of or to the target, and ``repr_tools.get_words_idxs_in_templates``
  returns its positions + 1 (the BOS ahead of them); AlphaEdit's code handles BOS itself;
- transformers 5 returns a tensor from a GPT-2 block where the code expects a tuple: the
  ``TraceDict`` of MEMIT / AlphaEdit's ``compute_z`` sees ``(hidden,)``;
- ROME's ``compute_v`` imports ``matplotlib.style.context`` and never uses it: a stand-in
  module when matplotlib is not installed;
- AlphaEdit's ``get_project`` is taken from ``experiments/evaluate.py`` without importing
  that module (its imports need the datasets); it hard-codes the threshold 2e-2.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch

from interp_edit import load_model, to_hf
from interp_edit.editing import AlphaEditor, EditRequest, memit, rome
from interp_edit.editing.methods.alphaedit import AlphaEditConfig
from interp_edit.editing.methods.memit import MEMITConfig
from interp_edit.editing.methods.rome import ROMEConfig
from interp_edit.editing.targets import prefixes_for
from interp_edit.statistics.keys import second_moments
from interp_edit.toyworld import counterfact_records, load_world

#: the code's semantics (the toy presets keep the ones they were measured with)
ROME_REFERENCE = dict(step_count="reference", kl_direction="edited||original", prefix_lengths=((5, 10), (10, 10)),
                      prefix_join="reference", weight_decay=0.5, early_stop_loss=0.05)
MEMIT_REFERENCE = dict(step_count="reference", kl_direction="edited||original", n_prefixes=5, prefix_length=10,
                       prefix_starts=("The", "Therefore", "Because", "I", "You"), prefix_join="reference",
                       key_average="by_type", weight_decay=0.5, early_stop_loss=0.05)
PACKAGES = ("rome", "memit", "AlphaEdit", "util", "dsets", "experiments", "baselines", "glue_eval", "nse")


def cpu_copy(path: str) -> Path:
    """A copy of the checkout with CUDA replaced by the CPU."""
    dest = Path(tempfile.mkdtemp(prefix="refcode_")) / Path(path).name
    shutil.copytree(path, dest, ignore=shutil.ignore_patterns(".git", "__pycache__", "data", "results"))
    for file in dest.rglob("*.py"):
        text = file.read_text(encoding="utf-8", errors="replace")
        new = text.replace('"cuda"', '"cpu"').replace(".cuda()", ".cpu()")
        if new != text:
            file.write_text(new, encoding="utf-8")
    return dest


@contextlib.contextmanager
def reference_code(path: Path):
    """Import the reference packages of ``path`` (their own ``util``, ``rome``, …)."""
    for name in [m for m in sys.modules if m.split(".")[0] in PACKAGES]:
        del sys.modules[name]
    try:
        import matplotlib.style  # noqa: F401  (ROME's compute_v imports it and never uses it)
    except ImportError:
        sys.modules.setdefault("matplotlib", types.ModuleType("matplotlib"))
        sys.modules["matplotlib.style"] = types.SimpleNamespace(context=None)
    old_cwd = os.getcwd()
    sys.path.insert(0, str(path))
    os.chdir(path)  # util/globals.py reads globals.yml from the working directory
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.path.remove(str(path))


class FakeStat:
    """What ``layer_stats`` returns, holding our C."""

    def __init__(self, moment):
        self.mom2 = types.SimpleNamespace(moment=lambda: moment.clone())


def shift_word_positions(repr_tools) -> None:
    """Positions of the code's ``get_words_idxs_in_templates`` (counted without BOS) + 1."""
    original = repr_tools.get_words_idxs_in_templates

    def shifted(*args, **kwargs):
        return [[i + 1 for i in row] for row in original(*args, **kwargs)]

    repr_tools.get_words_idxs_in_templates = shifted


class BosOnBatches:
    """The toy tokenizer for code written for GPT-2's (no BOS): BOS on padded batches only."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, **kwargs):
        add = isinstance(text, list) and bool(kwargs.get("padding", False))
        return self._tok(text, add_special_tokens=add, **kwargs)


def tuple_block_outputs(nethook_module):
    """A stand-in for the code's ``nethook`` whose ``TraceDict`` shows a block's tensor output as ``(hidden,)``."""
    block = re.compile(r"transformer\.h\.\d+")

    class View:
        def __init__(self, trace):
            self.trace = trace

        def __enter__(self):
            self.trace.__enter__()
            return self

        def __exit__(self, *exc):
            return self.trace.__exit__(*exc)

        def __getitem__(self, name):
            out = self.trace[name].output
            return types.SimpleNamespace(output=(out,) if block.fullmatch(name) and torch.is_tensor(out) else out)

    def trace_dict(module, layers=None, edit_output=None, **kwargs):
        def edit(output, layer):
            wrap = block.fullmatch(layer) is not None and torch.is_tensor(output)
            out = edit_output((output,) if wrap else output, layer)
            return out[0] if wrap else out

        return View(nethook_module.TraceDict(module, layers, edit_output=edit if edit_output else None, **kwargs))

    shim = types.SimpleNamespace(**{k: getattr(nethook_module, k) for k in dir(nethook_module) if not k.startswith("__")})
    shim.TraceDict = trace_dict
    return shim


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-30))


def ref_request(request: EditRequest, case_id: int) -> dict:
    return {"case_id": case_id, "prompt": request.prompt, "subject": request.subject,
            "target_new": {"str": request.target_new}, "target_true": {"str": request.target_true or ""}}


def weight_deltas(hf, names, fn):
    """Run ``fn`` (which edits ``hf`` in place) and return W_after − W_before for ``names``; ``hf`` is restored."""
    params = dict(hf.named_parameters())
    before = {n: params[n].detach().clone() for n in names}
    with contextlib.redirect_stdout(io.StringIO()):
        fn()
    out = {n: (params[n].detach() - before[n]).clone() for n in names}
    with torch.no_grad():
        for n in names:
            params[n].copy_(before[n])
    return out


def rome_hparams_dict(cfg: ROMEConfig, n_layers: int, lm_head: str = "lm_head") -> dict:
    return {"layers": [cfg.layer], "fact_token": "subject_last", "v_num_grad_steps": cfg.steps, "v_lr": cfg.lr,
            "v_loss_layer": n_layers - 1, "v_weight_decay": cfg.weight_decay, "clamp_norm_factor": cfg.clamp_norm_factor,
            "kl_factor": cfg.kl_factor, "mom2_adjustment": True, "context_template_length_params": [[5, 10], [10, 10]],
            "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj", "layer_module_tmp": "transformer.h.{}",
            "mlp_module_tmp": "transformer.h.{}.mlp", "attn_module_tmp": "transformer.h.{}.attn",
            "ln_f_module": "transformer.ln_f", "lm_head_module": lm_head, "mom2_dataset": "wikipedia",
            "mom2_n_samples": cfg.stats_samples, "mom2_dtype": "float32"}


def memit_hparams_dict(cfg: MEMITConfig, n_layers: int, lm_head: str = "lm_head") -> dict:
    out = {}
    out.update({"layers": list(cfg.layers), "layer_selection": "all", "fact_token": "subject_last",
                "v_num_grad_steps": cfg.steps, "v_lr": cfg.lr, "v_loss_layer": n_layers - 1,
                "v_weight_decay": cfg.weight_decay, "clamp_norm_factor": cfg.clamp_norm_factor, "kl_factor": cfg.kl_factor,
                "mom2_adjustment": True, "mom2_update_weight": cfg.mom2_update_weight,
                "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj", "layer_module_tmp": "transformer.h.{}",
                "mlp_module_tmp": "transformer.h.{}.mlp", "attn_module_tmp": "transformer.h.{}.attn",
                "ln_f_module": "transformer.ln_f", "lm_head_module": lm_head, "mom2_dataset": "wikipedia",
                "mom2_n_samples": cfg.stats_samples, "mom2_dtype": "float32"})
    return out


def lm_head_name(hf) -> str:
    """The unembedding's module name as the code's ``get_parameter`` finds it: with tied
    embeddings (a GPT-2 as built) only ``transformer.wte`` is a named parameter (MEMIT's
    gpt2-xl hparams say ``transformer.wte`` for this reason)."""
    return "lm_head" if "lm_head.weight" in dict(hf.named_parameters()) else "transformer.wte"


def templates_for(prefixes) -> list[str]:
    """Our context prefixes as the code's templates: "{}" and ``x + ". {}"`` (our prefix holds ``x + "."``)."""
    return ["{}"] + [p + " {}" for p in prefixes[1:]]


def compare_rome(path, model, hf, tok, requests, covs, args) -> None:
    code = cpu_copy(path)
    with reference_code(code):
        import rome.compute_u as compute_u
        import rome.repr_tools as repr_tools
        import rome.rome_main as rome_main
        from rome.rome_hparams import ROMEHyperParams

        shift_word_positions(repr_tools)
        compute_u.layer_stats = lambda *a, **k: FakeStat(covs[int(re.findall(r"\d+", a[2])[0])].to(args.ref_dtype))
        btok = BosOnBatches(tok)
        base = dict(layer=args.rome_layer, stats_samples=args.stats_samples, kernels=args.kernels, steps=args.steps, lr=args.lr,
                    clamp_norm_factor=4.0, **ROME_REFERENCE)
        settings = {
            "bare_nokl": dict(prefixes=(), kl_factor=0.0),
            "bare_kl": dict(prefixes=(), kl_factor=0.0625),
            "templates21_kl": dict(kl_factor=0.0625),
        }
        for name, fields in settings.items():
            cfg = ROMEConfig.for_model(model, **dict(base, variant="original"), **fields)
            prefixes = prefixes_for(model, cfg)
            hparams = ROMEHyperParams(**rome_hparams_dict(cfg, model.cfg.n_layers, lm_head_name(hf)))
            rome_main.CONTEXT_TEMPLATES_CACHE = templates_for(prefixes)
            compute_u.inv_mom2_cache.clear()
            w = f"transformer.h.{cfg.layer}.mlp.c_proj.weight"
            ref = weight_deltas(hf, [w], lambda hparams=hparams: rome_main.apply_rome_to_model(
                hf, btok, [ref_request(r, i) for i, r in enumerate(requests)], hparams))[w]
            fixed = dict(fields, prefixes=tuple(prefixes[1:]))
            for variant in ("original", "r-rome"):
                ours = rome(model, requests, **dict(base, variant=variant), **fixed, corpus=args.corpus, cache_dir=args.cache_dir).deltas[
                    f"blocks.{cfg.layer}.mlp.W_out"].dense()
                print(f"rome_{variant}_{name}_L{cfg.layer}_rel_dW_err={relative_error(ours, ref):.3e} "
                      f"(templates={len(prefixes)} requests={len(requests)} ref_norm={float(ref.norm()):.4g})", flush=True)
            if name == "templates21_kl":
                # the semantics the toy preset was measured with, against the reference
                legacy = rome(model, requests, **dict(base, variant="r-rome", step_count="updates",
                                                      kl_direction="original||edited"), **fixed, corpus=args.corpus, cache_dir=args.cache_dir).deltas[f"blocks.{cfg.layer}.mlp.W_out"].dense()
                print(f"rome_rrome_updates_kl-original||edited_{name}_rel_dW_err={relative_error(legacy, ref):.3e}")
                for field, value in (("step_count", "updates"), ("kl_direction", "original||edited")):
                    one = rome(model, requests, **dict(base, variant="original", **{field: value}), **fixed,
                               corpus=args.corpus, cache_dir=args.cache_dir).deltas[f"blocks.{cfg.layer}.mlp.W_out"].dense()
                    print(f"rome_original_{field}={value}_{name}_rel_dW_err={relative_error(one, ref):.3e}")


def compare_memit(path, model, hf, tok, requests, covs, args) -> None:
    code = cpu_copy(path)
    with reference_code(code):
        import memit.compute_z as compute_z
        import memit.memit_main as memit_main
        import rome.repr_tools as repr_tools
        from memit.memit_hparams import MEMITHyperParams

        shift_word_positions(repr_tools)
        compute_z.nethook = tuple_block_outputs(compute_z.nethook)
        memit_main.layer_stats = lambda *a, **k: FakeStat(covs[int(re.findall(r"\d+", a[2])[0])].to(args.ref_dtype))
        btok = BosOnBatches(tok)
        base = dict(layers=tuple(args.memit_layers), stats_samples=args.stats_samples, kernels=args.kernels, steps=args.steps, lr=args.lr,
                    clamp_norm_factor=args.memit_clamp, mom2_update_weight=args.mom2_update_weight, **MEMIT_REFERENCE)
        settings = {"bare_nokl": dict(prefixes=(), kl_factor=0.0), "templates6_kl": dict(kl_factor=0.0625)}
        for name, fields in settings.items():
            cfg = MEMITConfig.for_model(model, **base, **fields)
            prefixes = prefixes_for(model, cfg)
            hparams = MEMITHyperParams(**memit_hparams_dict(cfg, model.cfg.n_layers, lm_head_name(hf)))
            memit_main.CONTEXT_TEMPLATES_CACHE = [["{}"], [p + " {}" for p in prefixes[1:]]] if len(prefixes) > 1 else [["{}"]]
            memit_main.COV_CACHE.clear()
            fill_cov_cache(memit_main.COV_CACHE, hf, covs, cfg.layers, args)
            names = [f"transformer.h.{layer}.mlp.c_proj.weight" for layer in cfg.layers]
            with contextlib.redirect_stdout(io.StringIO()):
                deltas = memit_main.execute_memit(hf, btok, [ref_request(r, i) for i, r in enumerate(requests)], hparams)
            fixed = dict(fields, prefixes=tuple(prefixes[1:]))
            edit = memit(model, requests, **base, **fixed, corpus=args.corpus, cache_dir=args.cache_dir)
            tag = "_refcov64" if args.ref_cov_cache_float64 else ""
            for layer, wname in zip(cfg.layers, names, strict=True):
                adj_k, resid = deltas[wname]
                ref = adj_k.double() @ resid.double().T  # [d_mlp, d_model], as W_out
                ours = edit.deltas[f"blocks.{layer}.mlp.W_out"].dense()
                print(f"memit{tag}_{name}_L{layer}_rel_dW_err={relative_error(ours, ref):.3e} "
                      f"(templates={len(prefixes)} requests={len(requests)} ref_norm={float(ref.norm()):.4g})", flush=True)
            if name == "templates6_kl":
                legacy = memit(model, requests, **dict(base, key_average="flat"), **fixed, corpus=args.corpus, cache_dir=args.cache_dir)
                layer = cfg.layers[0]
                adj_k, resid = deltas[names[0]]
                ref = adj_k.double() @ resid.double().T
                print(f"memit_key_average=flat_{name}_L{layer}_rel_dW_err="
                      f"{relative_error(legacy.deltas[f'blocks.{layer}.mlp.W_out'].dense(), ref):.3e}")


def fill_cov_cache(cache: dict, hf, covs, layers, args) -> None:
    """With ``--ref-cov-cache-float64``: MEMIT's ``COV_CACHE`` holds our C in float64 (its
    ``get_cov`` stores ``moment().float()``, so C reaches its float64 solve rounded to float32)."""
    if args.ref_cov_cache_float64:
        name = hf.config._name_or_path.replace("/", "_")
        cache.update({(name, f"transformer.h.{layer}.mlp.c_proj"): covs[layer].double() for layer in layers})


def float64_linalg():
    """A stand-in for ``torch`` whose ``linalg.solve`` / ``linalg.svd`` run in float64 and
    return the input's dtype (to tell the code's float32 linear algebra from the method)."""

    def solve(a, b, **kw):
        return torch.linalg.solve(a.double(), b.double(), **kw).to(a.dtype)

    def svd(a, **kw):
        return tuple(t.to(a.dtype) for t in torch.linalg.svd(a.double(), **kw))

    linalg = types.SimpleNamespace(**{k: getattr(torch.linalg, k) for k in dir(torch.linalg) if not k.startswith("__")})
    linalg.solve, linalg.svd = solve, svd
    shim = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    shim.linalg = linalg
    return shim


def get_project_from(code: Path, get_cov, torch_module=torch):
    """``get_project`` of the AlphaEdit checkout's ``experiments/evaluate.py``, run as written
    with that module's ``get_cov`` import resolved to the code's own."""
    tree = ast.parse((code / "experiments" / "evaluate.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_project")
    namespace = {"torch": torch_module, "get_cov": get_cov}
    exec(compile(ast.Module([fn], []), str(code / "experiments" / "evaluate.py"), "exec"), namespace)
    return namespace["get_project"]


def compare_alphaedit(path, model, hf, tok, requests, covs, args) -> None:
    code = cpu_copy(path)
    with reference_code(code):
        import AlphaEdit.AlphaEdit_main as main
        import AlphaEdit.compute_z as compute_z
        from AlphaEdit.AlphaEdit_hparams import AlphaEditHyperParams

        compute_z.nethook = tuple_block_outputs(compute_z.nethook)
        main.layer_stats = lambda *a, **k: FakeStat(covs[int(re.findall(r"\d+", a[2])[0])].to(args.ref_dtype))
        if args.ref_float64_linalg:
            main.torch = float64_linalg()
        get_project = get_project_from(code, main.get_cov, main.torch)
        tag = "_reflinalg64" if args.ref_float64_linalg else ""
        base = dict(layers=tuple(args.memit_layers), stats_samples=args.stats_samples, kernels=args.kernels, steps=args.steps, lr=args.lr,
                    clamp_norm_factor=args.memit_clamp, mom2_update_weight=args.mom2_update_weight, l2=args.l2,
                    **MEMIT_REFERENCE,
                    nullspace_rule="absolute", nullspace_threshold=2e-2)
        half = len(requests) // 2
        settings = {"bare_nokl": dict(prefixes=(), kl_factor=0.0), "templates6_kl": dict(kl_factor=0.0625)}
        for name, fields in settings.items():
            cfg = AlphaEditConfig.for_model(model, **base, **fields)
            prefixes = prefixes_for(model, cfg)
            hp = memit_hparams_dict(cfg, model.cfg.n_layers, lm_head_name(hf))
            hp.update({"model_name": "gpt2-xl", "nullspace_threshold": cfg.nullspace_threshold, "L2": cfg.l2})
            hparams = AlphaEditHyperParams(**{k: v for k, v in hp.items() if k in AlphaEditHyperParams.__dataclass_fields__})
            main.CONTEXT_TEMPLATES_CACHE = [["{}"], [p + " {}" for p in prefixes[1:]]] if len(prefixes) > 1 else [["{}"]]
            main.COV_CACHE.clear()  # (no --ref-cov-cache-float64 here: the code's P @ (K Kᵀ + …) needs float32 P)
            d = model.cfg.d_mlp
            with contextlib.redirect_stdout(io.StringIO()):
                P = torch.stack([get_project(hf, tok, layer, hparams) for layer in cfg.layers])
            cache_c = torch.zeros(len(cfg.layers), d, d)
            names = [f"transformer.h.{layer}.mlp.c_proj.weight" for layer in cfg.layers]
            fixed = dict(fields, prefixes=tuple(prefixes[1:]))
            editor = AlphaEditor(model, **base, **fixed, corpus=args.corpus, cache_dir=args.cache_dir)
            ref_dims = [round(float(P[i].double().trace())) for i in range(len(cfg.layers))]  # a projection's rank
            print(f"alphaedit{tag}_{name}_nullspace_dims ours={[editor.nullspace_dims[layer] for layer in cfg.layers]} "
                  f"ref={ref_dims}")
            params = dict(hf.named_parameters())
            originals = {n: params[n].detach().clone() for n in names}
            applied = []
            try:
                for batch_index, batch in enumerate((requests[:half], requests[half:])):
                    before = {n: params[n].detach().clone() for n in names}
                    with contextlib.redirect_stdout(io.StringIO()):
                        _, cache_c = main.apply_AlphaEdit_to_model(
                            hf, tok, [ref_request(r, i) for i, r in enumerate(batch)], hparams, cache_c=cache_c, P=P)
                    edit = editor(model, batch)
                    applied.append(edit.apply(model))
                    for layer, wname in zip(cfg.layers, names, strict=True):
                        ref = params[wname].detach().double() - before[wname].double()
                        ours = edit.deltas[f"blocks.{layer}.mlp.W_out"].dense()
                        print(f"alphaedit{tag}_{name}_batch{batch_index}_L{layer}_rel_dW_err={relative_error(ours, ref):.3e} "
                              f"(templates={len(prefixes)} requests={len(batch)} ref_norm={float(ref.norm()):.4g})",
                              flush=True)
            finally:
                for e in reversed(applied):
                    e.undo(model)
                with torch.no_grad():
                    for n in names:
                        params[n].copy_(originals[n])


def random_gpt2(tok, args):
    """A random GPT-2 saved to a folder; (our HookedTransformer of it, the code's GPT2LMHeadModel of it)."""
    from transformers import GPT2LMHeadModel

    from interp_edit.adapter.tiny import tiny_hf_model

    folder = Path(args.export_dir or tempfile.mkdtemp(prefix="random_gpt2_"))
    tiny_hf_model("gpt2", vocab_size=len(tok), size=args.gpt2_size, init=args.gpt2_init).save_pretrained(folder)
    tok.save_pretrained(folder)
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    model = load_model(str(folder), fold_ln=False, center_writing_weights=False, center_unembed=False,
                       fold_value_biases=False)
    err = (model.blocks[0].mlp.W_out.detach() - hf.transformer.h[0].mlp.c_proj.weight.detach()).abs().max().item()
    print(f"random_gpt2 folder={folder} size={args.gpt2_size} init={args.gpt2_init} d_model={model.cfg.d_model} d_mlp={model.cfg.d_mlp} "
          f"n_layers={model.cfg.n_layers} W_out_vs_c_proj_max_abs={err:.1e}", flush=True)
    return model, hf


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rome")
    parser.add_argument("--memit")
    parser.add_argument("--alphaedit")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--rome-layer", type=int, default=0)
    parser.add_argument("--memit-layers", default="0,1")
    parser.add_argument("--memit-clamp", type=float, default=4.0)
    parser.add_argument("--mom2-update-weight", type=float, default=100.0)
    parser.add_argument("--l2", type=float, default=1.0)
    parser.add_argument("--stats-samples", type=int, default=4000)
    parser.add_argument("--ref-cov-dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--ref-float64-linalg", action="store_true",
                        help="run AlphaEdit's code's float32 solve and SVD in float64 (ours are float64)")
    parser.add_argument("--ref-cov-cache-float64", action="store_true",
                        help="MEMIT: the code's get_cov returns our float64 C (it rounds C to float32)")
    parser.add_argument("--kernels", default="fused", choices=["fused", "transformer_lens"],
                        help="our side's optimisation forwards (the editors' `kernels` field)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="toyworld", choices=["toyworld", "random-gpt2"])
    parser.add_argument("--gpt2-size", default="tiny", help="random-gpt2: a size of interp_edit.adapter.tiny (tiny, gpt2-small)")
    parser.add_argument("--gpt2-init", type=float, default=0.2,
                        help="random-gpt2: std of its weights (tiny_hf_model's init; GPT-2's own initializer_range is 0.02)")
    parser.add_argument("--export-dir", default=None, help="random-gpt2: the folder it is saved to (default: a temporary one)")
    args = parser.parse_args()
    args.memit_layers = [int(x) for x in args.memit_layers.split(",")]
    args.ref_dtype = getattr(torch, args.ref_cov_dtype)
    torch.set_num_threads(args.threads)
    model = load_model("toyworld")
    hf, tok = to_hf(model)
    args.corpus = None  # the toy model's own: its world's training-style text
    if args.model == "random-gpt2":
        model, hf = random_gpt2(tok, args)
        # the same toy-world text for C on both sides (a model without a world would stream Wikitext)
        from interp_edit.toyworld.corpus import CorpusSampler

        sampler = CorpusSampler(load_world(), seed=7919)
        args.corpus = [sampler.sample() for _ in range(args.stats_samples)]
    records = counterfact_records(load_world())[:: 7][: args.requests]  # different people and relations
    requests = [EditRequest(r.prompt, r.subject, r.target_new, r.target_true) for r in records]
    layers = sorted({args.rome_layer, *args.memit_layers})
    covs = second_moments(model, layers, n_samples=args.stats_samples, corpus=args.corpus, cache_dir=args.cache_dir, progress=False)
    print(json.dumps({"requests": [r.text + " -> " + r.target_new for r in requests]}))
    for flag, fn in (("rome", compare_rome), ("memit", compare_memit), ("alphaedit", compare_alphaedit)):
        if getattr(args, flag):
            fn(getattr(args, flag), model, hf, tok, requests, covs, args)


if __name__ == "__main__":
    main()
