"""Key statistics users can get: corpora from files, provenance on every statistic, ROME /
MEMIT / EasyEdit ``.npz`` files imported (written here with numpy and their documented key
names, not with our exporter) and exported, ``stats_samples="auto"`` checked against an
independent recomputation, and bad input refused before any forward with the model unchanged."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from model_state import assert_unchanged, snapshot

from interp_edit.adapter import model_fingerprint
from interp_edit.editing.methods.rome import rome
from interp_edit.errors import CorpusError, EditConfigError, StatisticsMismatchError
from interp_edit.statistics.corpus import corpus_hash
from interp_edit.statistics.keys import key_statistics
from interp_edit.statistics.npz import find_npz, read_npz, write_npz

FAST = dict(layer=0, steps=2, n_prefixes=1, prefix_length=3, prefix_lengths=None)
REQUEST = {"prompt": "{} was born in", "subject": "Talvik Corlo", "target_new": "Karsa"}


def corpus(toy_world, n: int, seed: int = 11) -> list[str]:
    from interp_edit.toyworld.corpus import CorpusSampler

    sampler = CorpusSampler(toy_world, seed=seed)
    return [sampler.sample() for _ in range(n)]


def plain_moment(model, texts, layer) -> tuple[torch.Tensor, int]:
    """(Σ k kᵀ in float64, count) over the non-BOS tokens of ``texts``, from TransformerLens'
    own right-padded batches (causal attention: the padding changes no real token)."""
    name = f"blocks.{layer}.mlp.hook_post"
    total, count = 0, 0
    for start in range(0, len(texts), 64):
        chunk = texts[start : start + 64]
        lengths = [model.to_tokens(t).shape[1] for t in chunk]
        _, cache = model.run_with_cache(model.to_tokens(chunk, padding_side="right"), names_filter=name,
                                        stop_at_layer=layer + 1)
        keys = torch.cat([cache[name][i, 1:n].double() for i, n in enumerate(lengths)])
        total, count = total + keys.T @ keys, count + len(keys)
    return total, count


@contextlib.contextmanager
def count_forwards(model):
    calls = []
    handle = model.embed.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def rome_layout(root, model_dir: str, module: str, sums: np.ndarray, count: int, n_texts: int | None,
                constructor: str = "util.runningstats.SecondMoment()", tokens_suffix: str = ""):
    """A file as kmeng01/rome's layer_stats writes it: <model>/<ds>_stats/<module>_<precision>_mom2_<n>.npz
    with the keys CombinedStat(mom2=SecondMoment()).state_dict() plus tally's sample_size."""
    folder = root / model_dir / "wikipedia_stats"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "" if n_texts is None else f"_{n_texts}"
    path = folder / f"{module}_{sums.dtype.name}_mom2{tokens_suffix}{suffix}.npz"
    np.savez(path, **{"mom2.constructor": np.array(constructor), "mom2.count": np.array(count), "mom2.mom2": sums,
                      "sample_size": np.array(np.nan if n_texts is None else n_texts)})
    return path


def test_file_corpora_give_the_statistics_of_their_texts(toy_model, toy_world, tmp_path):
    texts = corpus(toy_world, 30)
    (tmp_path / "c.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    from interp_edit.statistics.corpus import Corpus

    stats = key_statistics(toy_model, [1], corpus=tmp_path / "c.txt", n_samples=30, cache_dir=tmp_path / "cache", progress=False)[1]
    sums, count = plain_moment(toy_model, texts, 1)
    assert torch.allclose(stats.moment, sums / count, atol=1e-5, rtol=1e-4)
    prov = stats.provenance
    assert (prov.model_fingerprint, prov.site, prov.layer, prov.dim) == (model_fingerprint(toy_model), "mlp_post", 1, 512)
    assert (prov.corpus_hash, prov.n_texts, prov.n_tokens, prov.dtype) == (corpus_hash(texts), 30, count, "float64")
    assert prov.source == "computed" and "c.txt" in prov.corpus
    jsonl = key_statistics(toy_model, [1], corpus=Corpus(tmp_path / "c.jsonl", field="body"), n_samples=30,
                           cache_dir=tmp_path / "cache", progress=False)[1]
    assert jsonl.provenance.source == "cache" and torch.equal(jsonl.moment, stats.moment)  # same texts, same cache entry
    meta = json.loads(__import__("safetensors").safe_open(jsonl.provenance.path, "pt").metadata()["provenance"])
    assert (meta["model_fingerprint"], meta["corpus_hash"], meta["n_tokens"], meta["dtype"]) == \
        (model_fingerprint(toy_model), corpus_hash(texts), count, "float64")


def test_rome_and_easyedit_npz_files_are_used_and_recorded(toy_model, toy_world, tmp_path):
    texts = corpus(toy_world, 120)
    sums, count = plain_moment(toy_model, texts, 0)
    assert count > 2 * toy_model.cfg.d_mlp  # a full-rank C
    stats_dir = tmp_path / "data" / "stats"
    path = rome_layout(stats_dir, "toyworld", "transformer.h.0.mlp.c_proj", sums.numpy(), count, 120)  # --precision float64
    rome_layout(stats_dir, "gpt2-xl", "transformer.h.0.mlp.c_proj", np.eye(3, dtype=np.float32), 3, 10)  # another model: passed over
    state = snapshot(toy_model)
    got = read_npz(path, toy_model, layer=0, site="mlp_post")
    assert torch.allclose(got.moment, sums / count, rtol=1e-12, atol=1e-15)
    prov = got.provenance
    assert (prov.source, prov.layer, prov.site, prov.n_tokens, prov.n_texts, prov.dtype, prov.model_name) == \
        ("rome-npz", 0, "mlp_post", count, 120, "float64", "toyworld")
    assert prov.corpus_hash is None and prov.file_sha256 and prov.model_fingerprint == model_fingerprint(toy_model)
    from_file = rome(toy_model, [REQUEST], stats=stats_dir, cache_dir=tmp_path / "cache", **FAST)
    from_texts = rome(toy_model, [REQUEST], corpus=texts, stats_samples=120, cache_dir=tmp_path / "cache", **FAST)
    a, b = from_file.deltas["blocks.0.mlp.W_out"].dense(), from_texts.deltas["blocks.0.mlp.W_out"].dense()
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * b.abs().max())
    assert from_file.info["stats"][0]["source"] == "rome-npz" and from_file.info["stats"][0]["path"] == str(path.resolve())
    assert from_texts.info["stats"][0]["corpus_hash"] == corpus_hash(texts)
    from interp_edit.editing import Edit

    saved = Edit.load(from_file.save(tmp_path / "edit"), toy_model)
    assert saved.info["stats"] == from_file.info["stats"]  # the provenance travels with a saved edit
    # EasyEdit: the same layout, its own writer class, the model folder named by the last path component
    ee = rome_layout(tmp_path / "ee", "toyworld", "transformer.h.0.mlp.c_proj", sums.numpy().astype(np.float32), count, None,
                     constructor="easyeditor.util.runningstats.SecondMoment()")
    got = read_npz(ee, toy_model)
    assert got.provenance.source == "easyedit-npz" and got.provenance.n_texts is None and got.provenance.dtype == "float32"
    assert torch.allclose(got.moment, sums / count, rtol=1e-6, atol=1e-9)  # float32 sums, float64 moment
    assert_unchanged(toy_model, state)


def test_statistics_of_another_model_site_layer_or_dimension_are_refused(toy_model, tmp_path):
    d = toy_model.cfg.d_mlp
    eye = np.eye(d, dtype=np.float32) * 7
    cases = {
        "of model 'gpt2-xl'": rome_layout(tmp_path / "a", "gpt2-xl", "transformer.h.0.mlp.c_proj", eye, 7, 1),
        r"are of layer 3; the edit needs layer\(s\) \[0\]": rome_layout(tmp_path / "b", "toyworld", "transformer.h.3.mlp.c_proj", eye, 7, 1),
        "are of site 'z'; the edit needs site 'mlp_post'": rome_layout(tmp_path / "c", "toyworld", "transformer.h.0.attn.c_proj",
                                                                      np.eye(toy_model.cfg.d_model, dtype=np.float32), 7, 1),
        r"key dimension \(10, 10\); this model's 'mlp_post' keys have dimension 512": rome_layout(
            tmp_path / "d", "toyworld", "transformer.h.0.mlp.c_proj", np.eye(10, dtype=np.float32), 7, 1),
    }
    state = snapshot(toy_model)
    for message, path in cases.items():
        with count_forwards(toy_model) as calls, pytest.raises(StatisticsMismatchError, match=message):
            rome(toy_model, [REQUEST], stats=path, cache_dir=tmp_path / "cache", **FAST)
        assert calls == [], message
    with pytest.raises(StatisticsMismatchError, match="holds statistics of model"):
        rome(toy_model, [REQUEST], stats=tmp_path / "a", cache_dir=tmp_path / "cache", **FAST)
    loose = tmp_path / "transformer.h.0.mlp.c_proj_float32_mom2_1.npz"
    np.savez(loose, **{"mom2.count": np.array(7), "mom2.mom2": eye})
    with pytest.raises(StatisticsMismatchError, match="pass model_name= to state which model"):
        read_npz(loose, toy_model)
    assert read_npz(loose, toy_model, model_name="toyworld").provenance.model_name == "toyworld"
    # our export records the fingerprint: a file of another (same-shaped) model is refused by it
    stats = key_statistics(toy_model, [0], corpus=["Korwa Drarin plays the harp."] * 3, n_samples=3,
                           cache_dir=tmp_path / "cache", progress=False)[0]
    out = write_npz(stats, tmp_path / "ours", toy_model)
    arrays = dict(np.load(out))
    arrays["interp_edit.model_fingerprint"] = np.array("0123456789abcdef")
    np.savez(out, **arrays)
    with pytest.raises(StatisticsMismatchError, match="of another model \\(fingerprint 0123456789abcdef"):
        read_npz(out, toy_model)
    assert_unchanged(toy_model, state)


def test_export_is_the_rome_layout_with_our_provenance(toy_model, toy_world, tmp_path):
    texts = corpus(toy_world, 20)
    stats = key_statistics(toy_model, [2], corpus=texts, n_samples=20, cache_dir=tmp_path / "cache", progress=False)[2]
    path = write_npz(stats, tmp_path / "stats", toy_model, dataset="toytext")
    assert path.relative_to(tmp_path / "stats").as_posix() == "toyworld/toytext_stats/transformer.h.2.mlp.c_proj_float32_mom2_20.npz"
    with np.load(path) as data:  # read as ROME's SecondMoment.load_state_dict would
        count, sums = int(data["mom2.count"]), torch.from_numpy(data["mom2.mom2"])
        assert int(data["sample_size"]) == 20 and sums.dtype == torch.float32
        assert str(data["interp_edit.corpus_hash"]) == corpus_hash(texts)
    assert count == stats.provenance.n_tokens
    assert torch.allclose(sums.double() / count, stats.moment, rtol=1e-6, atol=1e-9)
    back = read_npz(path, toy_model, layer=2)
    assert (back.provenance.source, back.provenance.corpus_hash, back.provenance.n_texts, back.provenance.n_tokens) == \
        ("interp_edit-npz", corpus_hash(texts), 20, count)
    assert back.provenance.model_fingerprint == model_fingerprint(toy_model)


def test_auto_stops_at_the_first_sample_whose_whitened_keys_settle(toy_model, toy_world, tmp_path):
    from interp_edit.editing.methods.rome import ROMEConfig
    from interp_edit.editing.requests import prepare_requests
    from interp_edit.editing.targets import compute_keys, prefixes_for

    texts = corpus(toy_world, 1500, seed=5)
    tol = 0.3
    state = snapshot(toy_model)
    edit = rome(toy_model, [REQUEST], corpus=texts, stats_samples="auto", stats_tolerance=tol, stats_max_samples=1500,
                cache_dir=tmp_path, **FAST)
    record = edit.info["stats"][0]
    auto = record["auto"]
    assert auto["converged"] and record["n_texts"] == auto["steps"][-1]["n_texts"]
    assert record["n_tokens"] == auto["steps"][-1]["n_tokens"] and record["corpus_hash"] == corpus_hash(texts[: record["n_texts"]])
    # independent check: C from a plain per-text loop at each tried size, and C⁻¹k̄ of the request
    cfg = ROMEConfig.for_model(toy_model, **FAST)
    treq = prepare_requests(toy_model, [REQUEST], model_fingerprint(toy_model))
    key = compute_keys(toy_model, treq, 0, prefixes_for(toy_model, cfg))[0].double()
    sizes = [s["n_texts"] for s in auto["steps"]]
    assert sizes == [250, 500, 1000][: len(sizes)] and len(sizes) >= 2
    xs, sums, count, done = [], 0, 0, 0
    for n in sizes:
        more, added = plain_moment(toy_model, texts[done:n], 0)
        sums, count, done = sums + more, count + added, n
        xs.append(torch.linalg.solve(sums / count, key))
    changes = [float((b - a).norm() / b.norm()) for a, b in zip(xs, xs[1:], strict=False)]
    assert changes[-1] <= tol and all(c > tol for c in changes[:-1])
    assert changes == pytest.approx([s["relative_change"] for s in auto["steps"][1:]], rel=1e-3)
    # a rerun with the same request reads both cached steps and runs no statistics forward
    again = rome(toy_model, [REQUEST], corpus=texts, stats_samples="auto", stats_tolerance=tol, stats_max_samples=1500,
                 cache_dir=tmp_path, **FAST)
    assert again.info["stats"][0]["auto"]["from_cache"] and again.info["stats"][0]["n_texts"] == record["n_texts"]
    assert torch.equal(again.deltas["blocks.0.mlp.W_out"].dense(), edit.deltas["blocks.0.mlp.W_out"].dense())
    with pytest.warns(UserWarning, match="did not settle within 300 texts"):
        capped = key_statistics(toy_model, [0], corpus=texts, n_samples="auto", tolerance=1e-6, max_samples=300,
                                probe_keys=lambda: {0: key[None]}, cache_dir=tmp_path, progress=False)[0]
    assert capped.provenance.n_texts == 300 and not capped.provenance.auto["converged"]
    assert_unchanged(toy_model, state)


def test_auto_is_refused_where_the_editor_has_no_request_keys(toy_model, tmp_path):
    from interp_edit.editing.methods.alphaedit import AlphaEditor

    with pytest.raises(EditConfigError, match="'auto' watches the request keys.*AlphaEdit"):
        AlphaEditor(toy_model, stats_samples="auto", cache_dir=tmp_path)
    with pytest.raises(EditConfigError, match="stats_tolerance"):
        rome(toy_model, [REQUEST], stats_samples="auto", stats_tolerance=0.0, **FAST)
    with pytest.raises(EditConfigError, match="stats_samples"):
        rome(toy_model, [REQUEST], stats_samples="many", **FAST)


def test_bad_corpora_are_refused_before_any_forward(toy_model, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "Korwa Drarin plays the harp."}) + "\n")
    state = snapshot(toy_model)
    cases = {"has no text": tmp_path / "empty.txt", "no text field 'text'": tmp_path / "c.jsonl",
             "does not exist": tmp_path / "nope.txt", "corpus item 0 is not a string": [b"bytes"]}
    for message, bad in cases.items():
        for samples in (50, "auto"):
            with count_forwards(toy_model) as calls, pytest.raises(CorpusError, match=message):
                rome(toy_model, [REQUEST], corpus=bad, stats_samples=samples, cache_dir=tmp_path / "cache", **FAST)
            assert calls == [], (message, samples)
    assert_unchanged(toy_model, state)


def test_old_cache_files_without_provenance_are_recomputed(toy_model, tmp_path):
    from safetensors.torch import save_file

    texts = ["Korwa Drarin plays the harp.", "Talvik Corlo was born in Karsa."]
    first = key_statistics(toy_model, [0], corpus=texts, n_samples=2, cache_dir=tmp_path, progress=False)[0]
    path = first.provenance.path
    save_file({"moment": torch.zeros(512, 512, dtype=torch.float64)}, path)  # an old file: no provenance
    with pytest.warns(UserWarning, match="records no provenance.*recomputing"):
        again = key_statistics(toy_model, [0], corpus=texts, n_samples=2, cache_dir=tmp_path, progress=False)[0]
    assert torch.allclose(again.moment, first.moment) and again.provenance.source == "computed"


def test_memit_auto_watches_its_own_solve_and_given_statistics_skip_the_corpus(toy_model, toy_world, tmp_path):
    from interp_edit.editing.methods.memit import memit

    texts = corpus(toy_world, 1000, seed=9)
    fast = dict(layers=(0, 1), steps=2, n_prefixes=1, prefix_length=3)
    edit = memit(toy_model, [REQUEST], corpus=texts, stats_samples="auto", stats_tolerance=0.6, stats_max_samples=1000,
                 cache_dir=tmp_path, **fast)
    records = edit.info["stats"]
    assert [r["layer"] for r in records] == [0, 1] and records[0]["auto"]["probe"].endswith("·C + KKᵀ)⁻¹K")
    assert records[0]["n_texts"] == records[1]["n_texts"] == records[0]["auto"]["steps"][-1]["n_texts"]
    assert records[0]["auto"]["converged"] and records[0]["auto"]["steps"][-1]["relative_change"] <= 0.6
    # statistics given per layer (a KeyStatistics and a cache file) are used as they are: no corpus read
    stats = key_statistics(toy_model, [0, 1], corpus=texts, n_samples=records[0]["n_texts"], cache_dir=tmp_path, progress=False)
    given = {0: stats[0], 1: stats[1].provenance.path}
    again = memit(toy_model, [REQUEST], corpus=tmp_path / "no-such-corpus.txt", stats=given, cache_dir=tmp_path, **fast)
    assert [r["source"] for r in again.info["stats"]] == ["cache", "cache"]
    assert torch.equal(again.deltas["blocks.0.mlp.W_out"].dense(), edit.deltas["blocks.0.mlp.W_out"].dense())
    with pytest.raises(StatisticsMismatchError, match="are of layer 1; the edit needs layer 0"):
        memit(toy_model, [REQUEST], stats={0: stats[1]}, cache_dir=tmp_path, **fast)


@pytest.mark.parametrize("tokens_suffix", ["_t{batch_tokens}", "_t512"])
def test_rome_files_of_a_batch_token_budget_are_found(toy_model, toy_world, tmp_path, tokens_suffix):
    """kmeng01/rome's layer_stats names a file of a batch_tokens budget below the context with the
    literal, unformatted suffix "_t{batch_tokens}" (its string is not an f-string)."""
    texts = corpus(toy_world, 120)
    sums, count = plain_moment(toy_model, texts, 0)
    stats_dir = tmp_path / "stats"
    path = rome_layout(stats_dir, "toyworld", "transformer.h.0.mlp.c_proj", sums.numpy(), count, 120,
                       tokens_suffix=tokens_suffix)
    assert find_npz(stats_dir, toy_model, "mlp_post", [0]) == {0: path}
    got = key_statistics(toy_model, [0], stats=stats_dir, progress=False)[0]
    assert got.provenance.source == "rome-npz" and torch.allclose(got.moment, sums / count, rtol=1e-12, atol=1e-15)
