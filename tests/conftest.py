"""Shared fixtures: the shipped toy-world model and world are loaded once per test session."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import os

    torch.set_num_threads(int(os.environ.get("INTERP_EDIT_TEST_THREADS", "2")))


#: the session's shared models (toy_model, tiny_model), checked after every test by _shared_models_clean
_SHARED_MODELS: list = []


@pytest.fixture(autouse=True)
def _shared_models_clean(request):
    """A test that leaves an edit applied on a shared model fails (an error naming it), and the
    edit is undone, so that the tests after it see the model as it was."""
    yield
    from interp_edit.editing import applied_edits

    for model in _SHARED_MODELS:
        left = applied_edits(model)
        for edit in reversed(left):
            edit.undo(model)
        if left:
            pytest.fail(f"{request.node.nodeid} left {len(left)} edit(s) applied on the shared model", pytrace=False)


@pytest.fixture(scope="session")
def toy_model():
    from interp_edit import load_model

    model = load_model("toyworld")
    _SHARED_MODELS.append(model)
    return model


@pytest.fixture(scope="session")
def toy_world():
    from interp_edit.toyworld import load_world

    return load_world()


@pytest.fixture(scope="session")
def toy_metrics(toy_model, toy_world):
    from interp_edit.toyworld.evaluation import evaluate_toyworld

    return evaluate_toyworld(toy_model, toy_world)


@pytest.fixture(scope="session", autouse=True)
def _stats_cache(tmp_path_factory):
    """Key statistics are cached in a folder of this test session, not the user's cache."""
    import os

    from interp_edit.statistics.collect import CACHE_ENV

    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("stats-cache"))
    yield
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


@pytest.fixture(scope="session")
def person_records(toy_world):
    """Toy-world CounterFact records about people, in a fixed shuffled order."""
    import random

    from interp_edit.toyworld import counterfact_records
    from interp_edit.toyworld.world import stable_seed

    records = [r for r in counterfact_records(toy_world) if r.relation_id in ("born_in", "profession", "speaks", "instrument")]
    random.Random(stable_seed("editing-tests")).shuffle(records)
    return records


@pytest.fixture(scope="session")
def distinct_subject_records(person_records):
    """The first 8 records of ``person_records[100:]`` about 8 different people (WISE's tests)."""
    out, seen = [], set()
    for r in person_records[100:]:
        if r.subject not in seen:
            seen.add(r.subject)
            out.append(r)
        if len(out) == 8:
            return out


@pytest.fixture(scope="session")
def tiny_model(toy_model):
    """A tiny randomly initialised GPT-2-style model sharing the toy tokenizer (tests that
    change it restore it bit for bit)."""
    from interp_edit.adapter import build_hooked_transformer
    from interp_edit.adapter.bridge import hooked_available

    torch.manual_seed(0)
    if not hooked_available():  # TransformerLens 4: the same shape as a Hugging Face GPT-2 on the bridge
        import transformers

        from interp_edit import load_model

        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=3, n_embd=32, n_head=4, n_inner=64, n_positions=64, vocab_size=toy_model.cfg.d_vocab,
            activation_function="gelu_new", initializer_range=0.8 / 32**0.5,  # HookedTransformer's default scale
            bos_token_id=toy_model.tokenizer.bos_token_id,
            eos_token_id=toy_model.tokenizer.eos_token_id))
        model = load_model("tiny-gpt2", hf_model=hf, tokenizer=toy_model.tokenizer, backend="bridge")
        _SHARED_MODELS.append(model)
        return model
    cfg = dict(n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=64, d_vocab=toy_model.cfg.d_vocab,
               act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
               default_prepend_bos=True)
    model = build_hooked_transformer(cfg, toy_model.tokenizer)
    model.eval()
    _SHARED_MODELS.append(model)
    return model


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
