"""The time of one single edit with our ROME / MEMIT / AlphaEdit / FT-L next to EasyEdit's
implementation of the same method (zjunlp/EasyEdit easyeditor/models/{rome,memit,alphaedit,ft},
run unmodified), at identical settings, on the same weights, run alternately in one process.

Both sides edit the toy-world model exported with ``to_hf`` and saved to a temporary folder:
EasyEdit gets ``GPT2LMHeadModel.from_pretrained`` of that folder, ours ``load_model`` of the same
folder with no weight processing (so both edit the same ``c_proj`` / ``W_out``). Settings per
method: the same layer(s), steps (the reference step count: N steps = N−1 updates), lr, weight
decay, KL factor and direction, clamp, early-stopping loss, the same context templates (ours
sampled once by ``prefixes_for`` and passed to our editors through ``prefixes=``, EasyEdit's
``CONTEXT_TEMPLATES_CACHE`` filled with the same templates in its ``x + ". {}"`` form) and the
same key statistics C (ours, computed once before timing from the toy world's training-style
text; EasyEdit's ``layer_stats`` returns it, and EasyEdit's own caches – ``inv_mom2_cache``,
``COV_CACHE``, AlphaEdit's global ``P`` – are filled by one warm-up edit or, for P, by its own
``get_project`` before timing, as ours keeps its statistics on the model). One warm-up edit on
each side, then ``--rounds`` rounds of (ours, EasyEdit) on a different record each round (distinct
subjects; the same record on both sides within a round); medians are printed.

What is timed: ours, the editor call plus ``edit.apply(model)``; EasyEdit, its
``apply_*_to_model`` (which computes the update and adds it to the weights). Undoing the edit
(ours ``edit.undo``, EasyEdit's weights copied back) is outside the timing. EasyEdit's prints go
to a ``StringIO`` on both sides (``contextlib.redirect_stdout``).

Printed as ``key=value`` lines per method (``rome``, ``memit``, ``alphaedit``, ``ft``):
``*_ours_s`` / ``*_easyedit_s`` (medians), ``*_easyedit_over_ours`` (EasyEdit's time / ours: ≥ 1
means we are no slower), ``*_max_delta_diff`` (the largest |ΔW_ours − ΔW_easyedit| over the rounds
and edited weights), ``*_max_delta_abs`` (the largest |ΔW_easyedit|), and our parts from
``edit.info["seconds"]`` (stats, keys, targets, update; medians), ``*_outside_parts_s`` (median of
our editor call − the sum of its parts), ``*_easyedit_over_ours_median_per_round`` (the
median of the per-round ratios: a round's two edits share the record, so its early stopping) and ``*_apply_s`` (median of ``edit.apply``).

Shims, each a property of this environment, not of the algorithms:

- loading: the packages easyeditor, easyeditor.util, easyeditor.models and
  easyeditor.models.{rome,memit,alphaedit,ft} are registered empty (with their real folders as
  paths) so the editors load without EasyEdit's ``__init__`` files, which import every editor;
- statistics: ``layer_stats`` returns our C (float64; the code would stream Wikipedia);
- matplotlib: ROME's ``compute_v`` imports ``matplotlib.style.context`` and never uses it (a
  stand-in module when matplotlib is not installed);
- FT-L: the toy tokenizer puts BOS first; EasyEdit's ``execute_ft`` tokenises the prompts and
  the targets (" " + target) with the same call, so the tokenizer adds BOS to texts that do not
  start with a space (the prompts) and not to the targets (as GPT-2's tokenizer adds nothing);
- AlphaEdit: ours with ``nullspace_precision="float32"`` (P from C's singular vectors in
  float32, as the code; our default, float64, moves the deltas by about 8e-5 here); the
  projection P is computed by EasyEdit's own ``get_project`` once (the code loads
  it from ``P_loc`` or computes it on its first call) and ``cache_c`` is reset before every edit
  (``reset_cache=True``) so each timed edit is a single edit on the unedited model, as ours
  (``alphaedit``: a fresh ``AlphaEditor`` per call); ``model_name`` "gpt2-xl" picks the code's
  GPT-2 orientation.

ROME, MEMIT and AlphaEdit's own tokenizer handling needs no BOS shim: EasyEdit counts the
template's tokens with the same tokenizer call that builds the inputs (BOS included), and it
handles a transformers-5 GPT-2 block's tensor output itself (``nethook.get_hidden_state``).

Run locally, never in CI, on a checkout of EasyEdit:

    python benchmarks/bench_vs_easyedit.py PATH/TO/easyedit [--rounds 5] [--methods rome,memit,alphaedit,ft]
        [--dtype float64] [--shape gpt2-small]

``--shape gpt2-small`` (or ``gpt2-medium``) edits a randomly initialised GPT-2 of that shape
(the toy tokenizer, the toy world's requests) instead of the toy model: where the arithmetic, not
the per-module Python, sets the time. ``--dtype float64`` runs both sides in float64 (the delta differences that are float32 rounding
vanish there; the times are not the float32 ones).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import statistics as st
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_compare import FakeStat, lm_head_name  # noqa: E402

from interp_edit import load_model, to_hf  # noqa: E402
from interp_edit.editing import EditRequest, alphaedit, finetune, memit, rome  # noqa: E402
from interp_edit.editing.methods.alphaedit import AlphaEditConfig  # noqa: E402
from interp_edit.editing.methods.finetune import FTConfig  # noqa: E402
from interp_edit.editing.methods.memit import MEMITConfig  # noqa: E402
from interp_edit.editing.methods.rome import ROMEConfig  # noqa: E402
from interp_edit.editing.targets import prefixes_for  # noqa: E402
from interp_edit.statistics.keys import editor_statistics  # noqa: E402
from interp_edit.toyworld import counterfact_records, world_of  # noqa: E402
from interp_edit.toyworld.corpus import CorpusSampler  # noqa: E402

STATS_SAMPLES = 4000
#: the settings of each method (the code's semantics: reference step count, KL(edited‖original), ". " joins)
ROME_SETTINGS = dict(variant="original", layer=0, steps=20, lr=0.5, weight_decay=0.5, kl_factor=0.0625,
                     clamp_norm_factor=4.0, step_count="reference", kl_direction="edited||original",
                     prefix_lengths=((5, 10), (10, 10)), prefix_join="reference", early_stop_loss=0.05,
                     stats_samples=STATS_SAMPLES)
MEMIT_SETTINGS = dict(layers=(0, 1), steps=20, lr=0.5, weight_decay=0.5, kl_factor=0.0625, clamp_norm_factor=4.0,
                      mom2_update_weight=100.0, step_count="reference", kl_direction="edited||original",
                      n_prefixes=5, prefix_length=10, prefix_starts=("The", "Therefore", "Because", "I", "You"),
                      prefix_join="reference", key_average="by_type", early_stop_loss=0.05,
                      stats_samples=STATS_SAMPLES)
#: P from C's singular vectors in float32, as the code computes it (our default decomposes C in float64)
ALPHA_SETTINGS = dict(MEMIT_SETTINGS, l2=1.0, nullspace_rule="absolute", nullspace_threshold=2e-2,
                      nullspace_precision="float32")
FT_SETTINGS = dict(layer=0, steps=25, lr=1e-2, norm_constraint=2e-2, early_stop_loss=1e-2)


#: GPT-2 shapes with random weights (the toy tokenizer's ids are a prefix of the vocabulary)
SHAPES = {"gpt2-small": dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257),
          "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16, n_positions=1024, vocab_size=50257)}


def random_gpt2(shape: str):
    """A randomly initialised GPT-2 of a published shape (seeded)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**SHAPES[shape])).eval()


def quiet():
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def load_easyedit(root: str):
    """EasyEdit's editor modules without its ``__init__`` files."""
    try:
        import matplotlib.style  # noqa: F401
    except ImportError:
        sys.modules.setdefault("matplotlib", types.ModuleType("matplotlib"))
        sys.modules["matplotlib.style"] = types.SimpleNamespace(context=None)
    for name, sub in (("easyeditor", ""), ("easyeditor.util", "/util"), ("easyeditor.models", "/models"),
                      *((f"easyeditor.models.{m}", f"/models/{m}") for m in ("rome", "memit", "alphaedit", "ft"))):
        module = types.ModuleType(name)
        module.__path__ = [f"{root}/easyeditor{sub}"]
        sys.modules[name] = module
    return types.SimpleNamespace(**{
        key: importlib.import_module(f"easyeditor.models.{path}") for key, path in (
            ("rome_main", "rome.rome_main"), ("rome_u", "rome.compute_u"), ("rome_hp", "rome.rome_hparams"),
            ("memit_main", "memit.memit_main"), ("memit_hp", "memit.memit_hparams"),
            ("alpha_main", "alphaedit.AlphaEdit_main"), ("alpha_hp", "alphaedit.AlphaEdit_hparams"),
            ("ft_main", "ft.ft_main"), ("ft_hp", "ft.ft_hparams"))})


class BosOnPrompts:
    """FT-L: the toy tokenizer adds BOS to the prompts, not to the targets (which start with " ")."""

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, **kwargs):
        texts = [text] if isinstance(text, str) else text
        return self._tok(text, add_special_tokens=not all(t.startswith(" ") for t in texts), **kwargs)


def common_hparams(n_layers: int, lm_head: str) -> dict:
    return {"fact_token": "subject_last", "v_loss_layer": n_layers - 1, "mom2_adjustment": True,
            "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj", "layer_module_tmp": "transformer.h.{}",
            "mlp_module_tmp": "transformer.h.{}.mlp", "attn_module_tmp": "transformer.h.{}.attn",
            "ln_f_module": "transformer.ln_f", "lm_head_module": lm_head, "mom2_dataset": "wikipedia",
            "mom2_n_samples": STATS_SAMPLES, "mom2_dtype": "float32", "device": "cpu", "stats_dir": "unused"}


def dense(delta, n_rows: int) -> torch.Tensor:
    """ΔW of a low-rank or sparse-rows delta, float64."""
    return (delta.dense(n_rows) if hasattr(delta, "rows") else delta.dense()).double()


def ee_request(r: EditRequest, case_id: int, full_prompt: bool = False) -> dict:
    """EasyEdit's request; ``full_prompt``: the prompt with the subject filled in (as EasyEdit's
    editor hands it to FT, which does not format it)."""
    return {"case_id": case_id, "prompt": r.text if full_prompt else r.prompt, "subject": r.subject, "target_new": r.target_new,
            "ground_truth": r.target_true}


class Bench:
    def __init__(self, args):
        self.args = args
        toy = load_model("toyworld")
        world = world_of(toy)
        hf, tok = to_hf(toy)
        if args.shape != "toy":
            hf = random_gpt2(args.shape)
        folder = Path(tempfile.mkdtemp(prefix="bench_vs_easyedit_"))
        hf.save_pretrained(folder)
        tok.save_pretrained(folder)
        from transformers import GPT2LMHeadModel

        dtype = getattr(torch, args.dtype)
        self.hf = GPT2LMHeadModel.from_pretrained(folder).eval().to(dtype)
        self.tok = tok
        self.model = load_model(str(folder), fold_ln=False, center_writing_weights=False, center_unembed=False,
                                fold_value_biases=False, dtype=dtype)
        sampler = CorpusSampler(world, seed=7919)
        self.corpus = [sampler.sample() for _ in range(STATS_SAMPLES)]
        records, seen = [], set()
        for r in counterfact_records(world):
            if r.subject not in seen:
                seen.add(r.subject)
                records.append(EditRequest(r.prompt, r.subject, r.target_new, r.target_true))
        self.requests = records[:: 7][: args.rounds + 1]  # different people and relations; [0] is the warm-up
        self.ee = load_easyedit(args.easyedit)
        self.lm_head = lm_head_name(self.hf)
        self.n_layers = self.model.cfg.n_layers

    # -- helpers ---------------------------------------------------------------------------
    def ours(self, fn, request, names):
        start = time.perf_counter()
        edit = fn(request)
        call = time.perf_counter() - start
        start = time.perf_counter()
        applied = edit.apply(self.model)
        apply_s = time.perf_counter() - start
        applied.undo(self.model)
        deltas = {n: dense(edit.deltas[n], self.model.cfg.d_mlp) for n in names}
        return call + apply_s, call, apply_s, edit.info.get("seconds", {}), deltas

    def theirs(self, fn, names):
        params = dict(self.hf.named_parameters())
        before = {n: params[n].detach().clone() for n in names}
        with quiet():
            start = time.perf_counter()
            fn()
            total = time.perf_counter() - start
        deltas = {n: (params[n].detach() - before[n]).double() for n in names}
        with torch.no_grad():
            for n in names:
                params[n].copy_(before[n])
        return total, deltas

    def run(self, tag, ours_fn, theirs_fn, our_names, their_names):
        with quiet():
            ours_fn(self.requests[0])  # warm-up: statistics, prefixes, caches
        self.theirs(lambda: theirs_fn(0), their_names)  # warm-up: EasyEdit's caches (C⁻¹ / C)
        rows = []
        for i, request in enumerate(self.requests[1:], start=1):
            total, call, apply_s, parts, mine = self.ours(ours_fn, request, our_names)
            t_total, ref = self.theirs(lambda i=i: theirs_fn(i), their_names)
            diff = max(float((mine[a] - ref[b]).abs().max()) for a, b in zip(our_names, their_names, strict=True))
            absmax = max(float(ref[b].abs().max()) for b in their_names)
            rows.append(dict(total=total, call=call, apply=apply_s, parts=parts, theirs=t_total, diff=diff, absmax=absmax))
        med = lambda key: st.median(r[key] for r in rows)  # noqa: E731
        ours_s, theirs_s = med("total"), med("theirs")
        print(f"{tag}_ours_s={ours_s:.4f}", flush=True)
        print(f"{tag}_easyedit_s={theirs_s:.4f}")
        print(f"{tag}_easyedit_over_ours={theirs_s / ours_s:.3f}")
        print(f"{tag}_easyedit_over_ours_median_per_round={st.median(r['theirs'] / r['total'] for r in rows):.3f}")
        print(f"{tag}_max_delta_diff={max(r['diff'] for r in rows):.3e}")
        print(f"{tag}_max_delta_abs={max(r['absmax'] for r in rows):.3e}")
        part_names = sorted({k for r in rows for k in r["parts"]})
        for k in part_names:
            print(f"{tag}_ours_{k}_s={st.median(r['parts'].get(k, 0.0) for r in rows):.4f}")
        print(f"{tag}_ours_outside_parts_s={st.median(r['call'] - sum(r['parts'].values()) for r in rows):.4f}")
        print(f"{tag}_ours_apply_s={med('apply'):.4f}")
        print(f"{tag}_rounds={len(rows)} ours_all={[round(r['total'], 4) for r in rows]} "
              f"easyedit_all={[round(r['theirs'], 4) for r in rows]}", flush=True)

    def covs(self, cfg, layers):
        stats = editor_statistics(self.model, cfg, layers, corpus=self.corpus)  # from our store (computed at warm-up)
        return {layer: s.moment for layer, s in stats.items()}

    def stats_stub(self, covs):
        return lambda *a, **k: FakeStat(covs[int(re.findall(r"\d+", a[2])[0])])

    # -- methods -----------------------------------------------------------------------------
    def bench_rome(self):
        ee = self.ee
        cfg = ROMEConfig.for_model(self.model, **ROME_SETTINGS)
        prefixes = tuple(prefixes_for(self.model, cfg))
        fields = dict(ROME_SETTINGS, prefixes=prefixes[1:])
        fn = lambda r: rome(self.model, [r], corpus=self.corpus, **fields)  # noqa: E731
        with quiet():
            fn(self.requests[0])
        covs = self.covs(cfg, [cfg.layer])
        ee.rome_u.layer_stats = self.stats_stub(covs)
        ee.rome_u.inv_mom2_cache.clear()
        ee.rome_main.CONTEXT_TEMPLATES_CACHE = ["{}"] + [p + " {}" for p in prefixes[1:]]
        hp = dict(common_hparams(self.n_layers, self.lm_head), layers=[cfg.layer], v_num_grad_steps=cfg.steps, v_lr=cfg.lr,
                  v_weight_decay=cfg.weight_decay, clamp_norm_factor=cfg.clamp_norm_factor, kl_factor=cfg.kl_factor,
                  context_template_length_params=[[5, 10], [10, 10]], alg_name="ROME", model_name="gpt2-toy")
        hparams = ee.rome_hp.ROMEHyperParams(**hp)
        reqs = self.requests

        def theirs(i):
            with quiet():
                ee.rome_main.apply_rome_to_model(self.hf, self.tok, [ee_request(reqs[i], i)], hparams)

        self.run("rome", fn, theirs, [f"blocks.{cfg.layer}.mlp.W_out"], [f"transformer.h.{cfg.layer}.mlp.c_proj.weight"])

    def memit_like(self, tag, settings, config_cls, editor, main, hp_cls, extra):
        cfg = config_cls.for_model(self.model, **settings)
        prefixes = tuple(prefixes_for(self.model, cfg))
        fields = dict(settings, prefixes=prefixes[1:])
        fn = lambda r: editor(self.model, [r], corpus=self.corpus, **fields)  # noqa: E731
        with quiet():
            fn(self.requests[0])
        covs = self.covs(cfg, list(cfg.layers))
        main.layer_stats = self.stats_stub(covs)
        main.COV_CACHE.clear()
        main.CONTEXT_TEMPLATES_CACHE = [["{}"], [p + " {}" for p in prefixes[1:]]]
        hp = dict(common_hparams(self.n_layers, self.lm_head), layers=list(cfg.layers), layer_selection="all",
                  v_num_grad_steps=cfg.steps, v_lr=cfg.lr, v_weight_decay=cfg.weight_decay,
                  clamp_norm_factor=cfg.clamp_norm_factor, kl_factor=cfg.kl_factor,
                  mom2_update_weight=cfg.mom2_update_weight, **extra(cfg))
        hparams = hp_cls(**{k: v for k, v in hp.items() if k in hp_cls.__dataclass_fields__})
        return cfg, fn, hparams

    def bench_memit(self):
        ee = self.ee
        main = ee.memit_main
        cfg, fn, hparams = self.memit_like("memit", MEMIT_SETTINGS, MEMITConfig, memit, main, ee.memit_hp.MEMITHyperParams,
                                           lambda cfg: dict(alg_name="MEMIT", model_name="gpt2-toy"))
        reqs = self.requests

        def theirs(i):
            with quiet():
                main.apply_memit_to_model(self.hf, self.tok, [ee_request(reqs[i], i)], hparams)

        self.run("memit", fn, theirs, [f"blocks.{layer}.mlp.W_out" for layer in cfg.layers],
                 [f"transformer.h.{layer}.mlp.c_proj.weight" for layer in cfg.layers])

    def bench_alphaedit(self):
        ee = self.ee
        main = ee.alpha_main
        p_file = Path(tempfile.mkdtemp(prefix="bench_vs_easyedit_P_")) / "null_space_project.pt"
        cfg, fn, hparams = self.memit_like(
            "alphaedit", ALPHA_SETTINGS, AlphaEditConfig, alphaedit, main, ee.alpha_hp.AlphaEditHyperParams,
            lambda cfg: dict(alg_name="AlphaEdit", model_name="gpt2-xl", nullspace_threshold=cfg.nullspace_threshold,
                             L2=cfg.l2, P_loc=str(p_file)))
        with quiet():
            P = torch.stack([main.get_project(self.hf, self.tok, layer, hparams) for layer in cfg.layers])
        torch.save(P, p_file)  # where the code looks for it; its global P is the same tensor
        main.P, main.P_loaded = P, True
        reqs = self.requests

        def theirs(i):
            with quiet():
                main.apply_AlphaEdit_to_model(self.hf, self.tok, [ee_request(reqs[i], i)], hparams, reset_cache=True)

        self.run("alphaedit", fn, theirs, [f"blocks.{layer}.mlp.W_out" for layer in cfg.layers],
                 [f"transformer.h.{layer}.mlp.c_proj.weight" for layer in cfg.layers])

    def bench_ft(self):
        ee = self.ee
        cfg = FTConfig.for_model(self.model, **FT_SETTINGS)
        fn = lambda r: finetune(self.model, [r], **FT_SETTINGS)  # noqa: E731
        hp = dict(common_hparams(self.n_layers, self.lm_head), layers=[cfg.layer], num_steps=cfg.steps, lr=cfg.lr,
                  weight_decay=0.0, kl_factor=0.0, norm_constraint=cfg.norm_constraint, alg_name="FT",
                  model_name="gpt2-toy", objective_optimization="prompt_last",
                  rewrite_module_tmp="transformer.h.{}.mlp.c_proj.weight")
        hparams = ee.ft_hp.FTHyperParams(**{k: v for k, v in hp.items() if k in ee.ft_hp.FTHyperParams.__dataclass_fields__})
        tok = BosOnPrompts(self.tok)
        reqs = self.requests

        def theirs(i):
            with quiet():
                ee.ft_main.apply_ft_to_model(self.hf, tok, [ee_request(reqs[i], i, full_prompt=True)], hparams)

        self.run("ft", fn, theirs, [f"blocks.{cfg.layer}.mlp.W_out"], [f"transformer.h.{cfg.layer}.mlp.c_proj.weight"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("easyedit", help="the folder holding easyeditor/")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--methods", default="rome,memit,alphaedit,ft")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", default="toy", choices=("toy", *SHAPES),
                        help="the edited model: the toy-world model, or a random GPT-2 of that shape")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                        help="both models' dtype: float64 shows which delta differences are float32 rounding")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    print(f"device=cpu threads={args.threads} torch={torch.__version__} dtype={args.dtype} shape={args.shape}", flush=True)
    for method in args.methods.split(","):
        getattr(bench, f"bench_{method}")()


if __name__ == "__main__":
    main()
