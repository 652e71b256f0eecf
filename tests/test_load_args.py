"""load_model's arguments are checked where they enter, before anything is loaded: an argument
of the wrong kind raises an :class:`~interp_edit.errors.InterpEditError` naming it, what was
given and what is expected (never an ``AttributeError`` / ``AssertionError`` from inside
TransformerLens, nor an ``IndexError`` / ``TypeError`` at the first trace), and a ``hf_model``
passed in is left as it was.

The backend: ``INTERP_EDIT_TEST_BACKEND`` (as in :mod:`family_models`)."""

from __future__ import annotations

import functools
import re

import pytest
import torch
from family_models import BACKEND
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from interp_edit import load_model
from interp_edit.adapter.bridge import hooked_available
from interp_edit.adapter.loading import BUILTIN_MODELS
from interp_edit.adapter.tiny import tiny_hf_model
from interp_edit.adapter.tiny_tokenizers import tiny_tokenizer
from interp_edit.errors import InterpEditError, InvalidArgumentError

#: the backends this TransformerLens can load with
BACKENDS = ("hooked", "bridge") if hooked_available() else ("bridge",)


@functools.cache
def _tokenizer():
    """A Llama-style tokenizer of 320 tokens, trained offline."""
    return tiny_tokenizer("llama")


def _snapshot(hf):
    return {k: (v.detach().clone(), v.dtype, v.device) for k, v in hf.state_dict().items()}, hf.config.to_dict()


def _assert_untouched(hf, before):
    state, config = before
    after = hf.state_dict()
    assert sorted(after) == sorted(state)
    for key, (value, dtype, device) in state.items():
        assert after[key].dtype == dtype and after[key].device == device, key
        assert torch.equal(after[key].detach(), value), key
    assert hf.config.to_dict() == config
    assert not getattr(hf, "_interp_edit_bridged", False)  # no bridge wrapped it


def _refused(hf, match: str, **kwargs) -> str:
    """The message of load_model's refusal of ``hf`` with ``kwargs``; ``hf`` is checked untouched."""
    before = _snapshot(hf)
    with pytest.raises(InvalidArgumentError, match=match) as info:
        load_model("tiny-llama", hf_model=hf, **kwargs)
    _assert_untouched(hf, before)
    return str(info.value)


# --- 1. hf_model that is not a model object ---------------------------------------------------
@pytest.mark.parametrize("value", ["gpt2", 3, object(), {"config": {}}])
def test_hf_model_that_is_not_a_model_object_is_refused(value):
    with pytest.raises(InvalidArgumentError, match=r"hf_model= must be a Hugging Face model object") as info:
        load_model("mine", hf_model=value, tokenizer=_tokenizer(), backend=BACKEND)
    assert f"({type(value).__name__})" in str(info.value)


def test_hf_model_given_as_a_name_says_to_pass_it_as_the_name():
    with pytest.raises(InvalidArgumentError, match=r"got 'gpt2' \(str\).*load_model\('gpt2'\)"):
        load_model("mine", hf_model="gpt2", tokenizer=_tokenizer(), backend=BACKEND)


# --- 2. tokenizer that is not a tokenizer -----------------------------------------------------
@pytest.mark.parametrize("value", [object(), "llama", 320])
def test_tokenizer_that_is_not_a_tokenizer_is_refused_and_the_model_untouched(value):
    hf = tiny_hf_model("llama", vocab_size=len(_tokenizer()))
    message = _refused(hf, r"tokenizer= must be a Hugging Face tokenizer", tokenizer=value, backend=BACKEND)
    assert f"({type(value).__name__})" in message


# --- 3. tokenizer larger than the model's vocabulary ------------------------------------------
def test_tokenizer_larger_than_the_vocabulary_is_refused_and_the_model_untouched():
    hf = tiny_hf_model("llama", vocab_size=100)
    message = _refused(hf, r"tokenizer= has 320 tokens", tokenizer=_tokenizer(), backend=BACKEND)
    assert "vocabulary of 100" in message and "d_vocab" in message


def test_folder_with_a_tokenizer_larger_than_its_vocabulary_is_refused(tmp_path):
    tiny_hf_model("gpt2", vocab_size=100).save_pretrained(tmp_path)
    _tokenizer().save_pretrained(tmp_path)
    with pytest.raises(InvalidArgumentError, match=r"tokenizer= has 320 tokens .* vocabulary of 100"):
        load_model(str(tmp_path), backend=BACKEND)


def test_tokenizer_smaller_than_the_vocabulary_loads_and_traces():
    """Hugging Face models often pad their vocabulary: a smaller tokenizer is fine."""
    tokenizer = _tokenizer()
    model = load_model("tiny-llama", hf_model=tiny_hf_model("llama", vocab_size=len(tokenizer) + 64),
                       tokenizer=tokenizer, backend=BACKEND)
    with torch.no_grad():
        logits = model(model.to_tokens("Veltra is a city in"))
    assert logits.shape[-1] == len(tokenizer) + 64


# --- 4. a Hugging Face model without a tokenizer ----------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_folder_without_tokenizer_files_is_refused_before_its_weights_are_read(backend, tmp_path, monkeypatch):
    import transformers

    from interp_edit.adapter import streaming

    tiny_hf_model("gpt2", vocab_size=len(_tokenizer())).save_pretrained(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were read before the tokenizer was checked")

    monkeypatch.setattr(streaming, "safe_open", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    pattern = rf"tokenizer: backend='{backend}' needs a tokenizer .* folder {re.escape(str(tmp_path))} holds no tokenizer files"
    with pytest.raises(InvalidArgumentError, match=pattern):
        load_model(str(tmp_path), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_object_without_a_tokenizer_is_refused_and_untouched(backend):
    hf = tiny_hf_model("gpt2", vocab_size=len(_tokenizer()))
    _refused(hf, rf"tokenizer: backend='{backend}' needs a tokenizer for model 'tiny-llama'", backend=backend)


# --- the other arguments ----------------------------------------------------------------------
@pytest.mark.parametrize("device, match", [
    (0, r"device= must be a str or torch.device .* got 0 \(int\)"),
    ("nonsense", r"device= 'nonsense' is not a torch device"),
    ("cuda:99", r"device= 'cuda:99': this machine has \d+ CUDA device"),
    ("meta", r"device= 'meta': a model on the meta device holds no weights"),
    (torch.device("meta"), r"device= device\(type='meta'\): a model on the meta device holds no weights"),
])
def test_device_of_the_wrong_kind_is_refused(device, match):
    with pytest.raises(InvalidArgumentError, match=match):
        load_model("toyworld", device=device)


@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_device_is_refused_for_real_weights_and_untouched(backend):
    hf = tiny_hf_model("llama", vocab_size=len(_tokenizer()))
    _refused(hf, r"device= 'meta': a model on the meta device holds no weights", backend=backend, device="meta",
             tokenizer=_tokenizer())


@pytest.mark.parametrize("flag", ["fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"])
def test_processing_flag_that_is_not_a_bool_is_refused(flag):
    with pytest.raises(InvalidArgumentError, match=rf"{flag}= must be True, False or None .* got 1 \(int\)"):
        load_model("toyworld", **{flag: 1})


def test_name_may_be_a_path():
    assert load_model(BUILTIN_MODELS["toyworld"]).cfg.n_layers == 6


# --- property: every argument of the wrong kind is refused by name ----------------------------
FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
ARGS = ("name", "device", "dtype", "backend", "hf_model", "tokenizer", "check_equivalence", *FLAGS)

#: values no argument of load_model takes (None is added where an argument does not allow it)
_ANY_WRONG = st.one_of(
    st.integers(), st.floats(), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.builds(object), st.binary(max_size=3),
)


def _strings(prefix: str) -> st.SearchStrategy[str]:
    return st.text(max_size=6).map(lambda s: prefix + s)


_WRONG = {
    "name": st.one_of(_ANY_WRONG, st.none(), st.just("")),
    "device": st.one_of(_ANY_WRONG, st.none(), _strings("no-such-device")),
    "dtype": st.one_of(_ANY_WRONG, st.none(), _strings("no-such-dtype")),
    "backend": st.one_of(_ANY_WRONG, st.text(max_size=8).filter(lambda s: s not in BACKENDS),
                         *([] if hooked_available() else [st.just("hooked")])),
    "hf_model": st.one_of(_ANY_WRONG, st.text(max_size=8)),
    "tokenizer": st.one_of(_ANY_WRONG, st.text(max_size=8)),
    "check_equivalence": st.one_of(_ANY_WRONG, st.text(max_size=4)),
    **{flag: st.one_of(_ANY_WRONG, st.text(max_size=4)) for flag in FLAGS},
}
_VALID = {
    "name": st.sampled_from(["toyworld", BUILTIN_MODELS["toyworld"]]),
    "device": st.sampled_from(["cpu", torch.device("cpu")]),
    "dtype": st.sampled_from([torch.float32, "float32"]),
    "backend": st.sampled_from([None, *BACKENDS]),
    "hf_model": st.none(),
    "tokenizer": st.sampled_from([None, "toy"]),  # "toy": the toy world's own tokenizer (ignored for a checkpoint)
    "check_equivalence": st.sampled_from([None, False]),  # True is refused for a load that is not from Hugging Face
    **{flag: st.sampled_from([None, False, True]) for flag in FLAGS},
}


@functools.cache
def _toy_tokenizer():
    return load_model("toyworld").tokenizer


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), wrong=st.sets(st.sampled_from(ARGS), max_size=2))
def test_load_model_refuses_each_argument_of_the_wrong_kind_by_name(data, wrong):
    args = {arg: data.draw((_WRONG if arg in wrong else _VALID)[arg], label=arg) for arg in ARGS}
    if args["tokenizer"] == "toy" and "tokenizer" not in wrong:
        args["tokenizer"] = _toy_tokenizer()
    backend = args["backend"] or ("hooked" if hooked_available() else "bridge")
    conflict = not wrong and backend == "bridge" and any(args[f] for f in FLAGS)  # the bridge keeps weights unprocessed
    try:
        model = load_model(args.pop("name"), **args)
    except InterpEditError as err:
        named = {arg for arg in ARGS if re.search(rf"\b{arg}\b", str(err))}
        assert wrong or conflict, f"valid arguments refused: {err}"
        assert named & (wrong or {"backend"}), f"the message names none of {sorted(wrong)}: {err}"
        event(f"refused: {type(err).__name__}")
    else:
        assert not wrong and not conflict, f"load_model took {sorted(wrong)} of the wrong kind"
        assert model.cfg.n_layers == 6
        event("loaded")
