"""Key-statistics collection (interp_edit.statistics.collect): the batched, token-budgeted,
block-triangular accumulation equals a float64 reference taken text by text from
``run_with_cache`` (float32 and bfloat16 models); padding is never counted; texts longer than
the context are cut to it as ROME's ``layer_stats`` does; the packing is recorded in the
provenance and keys the cache."""

from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interp_edit.errors import EditConfigError
from interp_edit.statistics.collect import _fixed_statistics, batches, collect_second_moments

SHORT = ["Talvik Corlo was born in Karsa.", "Korwa Drarin plays the harp.", "Lisvo Pimlo speaks Heskian.",
         "As everyone knows, Beldel Nordel works as a doctor.", "Karsa."]


def long_text(model, min_tokens: int) -> str:
    text = ""
    while len(model.tokenizer.encode(text, add_special_tokens=False)) < min_tokens:
        text += " " + SHORT[len(text) % 4]
    return text.strip()


def reference(model, texts, layer: int, site: str, packing: str) -> tuple[torch.Tensor, int]:
    """(E[k kᵀ] in float64, count): one unpadded ``run_with_cache`` per text, keys upcast to
    float64 and multiplied in plain torch; ``"bos"``: BOS + text, BOS not counted; ``"rome"``:
    the tokenizer's default encoding, every token counted; both cut to the context."""
    name = f"blocks.{layer}.mlp.hook_post" if site == "mlp_post" else f"blocks.{layer}.attn.hook_z"
    total, count = torch.zeros((), dtype=torch.float64), 0
    for text in texts:
        if packing == "bos":
            ids = [model.tokenizer.bos_token_id] + model.tokenizer.encode(text, add_special_tokens=False)
        else:
            ids = model.tokenizer.encode(text)
        ids = ids[: model.cfg.n_ctx]
        _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=name)
        act = cache[name][0]
        keys = act.reshape(act.shape[0], -1).double()[1 if packing == "bos" else 0:]
        total, count = total + torch.einsum("ni,nj->ij", keys, keys), count + len(keys)
    return total / count, count


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |C − R| / sqrt(R_ii R_jj) (each entry against its Cauchy–Schwarz scale)."""
    scale = ref.diagonal().clamp_min(1e-30).sqrt()
    return float(((got - ref).abs() / (scale[:, None] * scale[None])).max())


@pytest.fixture(scope="module")
def bf16_model():
    from interp_edit import load_model

    return load_model("toyworld", dtype=torch.bfloat16)


@pytest.mark.parametrize("packing", ["bos", "rome"])
def test_accumulation_equals_a_float64_reference_fp32(toy_model, packing):
    texts = SHORT + [long_text(toy_model, 2 * toy_model.cfg.n_ctx)]  # one longer than the context
    for layer, site in ((1, "mlp_post"), (3, "mlp_post"), (2, "z")):
        ref, _ = reference(toy_model, texts, layer, site, packing)
        # one text per batch: the very forwards of the reference, so only the accumulation differs
        alone = collect_second_moments(toy_model, [layer], site, texts, batch_size=1, progress=False, packing=packing)[layer]
        assert alone.dtype == torch.float64 and torch.equal(alone, alone.T)
        assert relative_error(alone, ref) < 1e-6, (layer, site)
        assert float((alone - ref).norm() / ref.norm()) < 1e-6
        # batches of at most 3 texts and 90 tokens (the long text alone): float32 forwards of padded
        # batches differ from unpadded ones in the last bits (~1e-6 here), never by a counted pad (~1e-2)
        batched = collect_second_moments(toy_model, [layer], site, texts, batch_size=3, batch_tokens=90, progress=False,
                                         packing=packing)[layer]
        assert relative_error(batched, ref) < 1e-5, (layer, site)


def test_accumulation_equals_a_float64_reference_bf16(bf16_model):
    texts = SHORT[:4]
    got = collect_second_moments(bf16_model, [0, 2], "mlp_post", texts, batch_size=1, progress=False)
    for layer in (0, 2):
        ref, _ = reference(bf16_model, texts, layer, "mlp_post", "bos")  # the same unpadded forwards
        assert got[layer].dtype == torch.float64
        assert relative_error(got[layer], ref) < 1e-6
        assert float((got[layer] - ref).norm() / ref.norm()) < 1e-6


def test_padding_is_never_counted(toy_model):
    texts = [SHORT[4], SHORT[3], long_text(toy_model, 40)]  # 3 very different lengths in one batch
    got = collect_second_moments(toy_model, [0], "mlp_post", texts, batch_size=8, progress=False)[0]
    # the reference: the same right-padded batch, through run_with_cache, each text's own positions
    name = "blocks.0.mlp.hook_post"
    rows = [[toy_model.tokenizer.bos_token_id] + toy_model.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    rows = sorted(rows, key=len, reverse=True)
    tokens = torch.tensor([r + [toy_model.tokenizer.pad_token_id] * (len(rows[0]) - len(r)) for r in rows])
    _, cache = toy_model.run_with_cache(tokens, names_filter=name)
    keys = torch.cat([cache[name][i, 1 : len(r)].double() for i, r in enumerate(rows)])
    ref = torch.einsum("ni,nj->ij", keys, keys) / len(keys)
    assert relative_error(got, ref) < 1e-6


def test_packing_enters_provenance_and_cache_key(toy_model, tmp_path):
    texts = SHORT + [long_text(toy_model, 3 * toy_model.cfg.n_ctx)]
    bos = _fixed_statistics(toy_model, [0], "mlp_post", texts, len(texts), 32, tmp_path, False)[0]
    rome = _fixed_statistics(toy_model, [0], "mlp_post", texts, len(texts), 32, tmp_path, False, packing="rome")[0]
    assert (bos.provenance.packing, rome.provenance.packing) == ("bos", "rome")
    assert bos.provenance.path != rome.provenance.path and len(list(tmp_path.glob("*.safetensors"))) == 2
    _, n_bos = reference(toy_model, texts, 0, "mlp_post", "bos")
    _, n_rome = reference(toy_model, texts, 0, "mlp_post", "rome")
    assert (bos.provenance.n_tokens, rome.provenance.n_tokens) == (n_bos, n_rome)
    # the long text is cut to the context (ROME's truncation, not concatenation): n_ctx tokens counted in "rome"
    n_short = sum(len(toy_model.tokenizer.encode(t)) for t in SHORT)
    assert n_rome == n_short + toy_model.cfg.n_ctx and n_bos == n_rome - len(texts)
    # a file of one packing is never read for the other: copied over the other's name, it is recomputed
    shutil.copy(rome.provenance.path, bos.provenance.path)
    with pytest.warns(UserWarning, match="packing is 'rome', not 'bos'"):
        again = _fixed_statistics(toy_model, [0], "mlp_post", texts, len(texts), 32, tmp_path, False)[0]
    assert again.provenance.source == "computed" and torch.allclose(again.moment, bos.moment, rtol=1e-9, atol=0)
    cached = _fixed_statistics(toy_model, [0], "mlp_post", texts, len(texts), 32, tmp_path, False, packing="rome")[0]
    assert cached.provenance.source == "cache" and torch.equal(cached.moment, rome.moment)


def test_bad_packing_is_refused(toy_model, tmp_path):
    with pytest.raises(EditConfigError, match="argument 'packing'"):
        collect_second_moments(toy_model, [0], "mlp_post", SHORT, packing="concat")
    with pytest.raises(EditConfigError, match="argument 'packing'"):
        _fixed_statistics(toy_model, [0], "mlp_post", SHORT, 3, 32, tmp_path, False, packing="none")
    assert not list(tmp_path.iterdir())


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 50), min_size=1, max_size=40), batch_size=st.integers(1, 8),
       budget=st.integers(1, 200))
def test_batches_respect_the_text_and_token_budgets(lengths, batch_size, budget):
    ids = [[i] * n for i, n in enumerate(lengths)]
    seen = []
    for tokens, lens in batches(ids, batch_size=batch_size, batch_tokens=budget, pad_id=-1):
        rows, width = tokens.shape
        assert rows <= batch_size and (rows == 1 or rows * width <= budget)
        assert width == int(lens.max())
        for row, n in zip(tokens.tolist(), lens.tolist(), strict=True):
            assert row[:n] == [row[0]] * n and row[n:] == [-1] * (width - n)
            seen.append(row[0])
    assert sorted(seen) == list(range(len(lengths)))


def test_an_editor_config_chooses_the_packing(toy_model, tmp_path):
    """``stats_packing`` in an editor's config reaches the statistics (their provenance and the
    in-memory store key), and a bad value names the field before anything runs."""
    from interp_edit.editing import EditRequest, rome
    from interp_edit.statistics import clear_statistics_cache

    request = EditRequest("{} was born in", "Talvik Corlo", target_new="Gemmel")
    packings = []
    for packing in ("bos", "rome"):
        e = rome(toy_model, [request], corpus=SHORT, cache_dir=tmp_path, steps=2, n_prefixes=1,
                 stats_samples=len(SHORT), stats_packing=packing)
        packings.append(e.info["stats"][0]["packing"])
    assert packings == ["bos", "rome"]
    clear_statistics_cache(toy_model)
    before = len(list(tmp_path.iterdir()))
    with pytest.raises(EditConfigError, match="field 'stats_packing'"):
        rome(toy_model, [request], corpus=SHORT, cache_dir=tmp_path, stats_samples=len(SHORT), stats_packing="concat")
    assert len(list(tmp_path.iterdir())) == before
