"""The target vectors of a batch are optimised together (``chunk_size`` requests per run), and
each request's optimisation is independent: the batched run equals one run per request
(``chunk_size=1``) within 1e-5 in float32 — for v* and z directly, with requests that stop early
at different steps, and on the deltas of MEMIT, AlphaEdit, MEMIT-CSK and IntAttn."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from interp_edit.adapter import model_fingerprint
from interp_edit.editing import MEMITConfig, alphaedit, intattn, memit, memit_csk, prepare_requests
from interp_edit.editing.targets import optimise_targets, prefixes_for

TOL = 1e-5
FAST = dict(layers=(0, 1), steps=4, n_prefixes=1, prefix_length=4)


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| relative to max(1, max |a|)."""
    return float((a - b).abs().max() / max(1.0, float(a.abs().max())))


@pytest.mark.parametrize("initial_site", ["resid_post", "mlp_out"])
def test_batched_targets_equal_one_at_a_time_with_early_stops(toy_model, person_records, initial_site):
    treqs = prepare_requests(toy_model, person_records[:8], model_fingerprint(toy_model))
    cfg = MEMITConfig.for_model(toy_model, steps=12)
    prefixes = prefixes_for(toy_model, cfg)
    # a stopping loss that some requests reach early, at different steps, and some never
    probe = optimise_targets(toy_model, treqs, 1, prefixes, cfg.target_config(), initial_site=initial_site)
    stop = float(probe.loss.quantile(0.75))
    tcfg = dataclasses.replace(cfg.target_config(), early_stop_loss=stop)
    batched = optimise_targets(toy_model, treqs, 1, prefixes, tcfg, initial_site=initial_site)
    single = optimise_targets(toy_model, treqs, 1, prefixes, dataclasses.replace(tcfg, chunk_size=1),
                              initial_site=initial_site)
    full = 12
    assert batched.steps == single.steps
    assert min(batched.steps) < full and full in batched.steps, batched.steps  # requests stop at different steps
    assert close(batched.initial, single.initial) <= TOL
    assert close(batched.target, single.target) <= TOL
    assert close(batched.loss, single.loss) <= TOL


def _dense(edit) -> dict[str, torch.Tensor]:
    return {name: delta.dense() for name, delta in edit.deltas.items()}


@pytest.fixture(scope="module")
def csk_requests(toy_world):
    from interp_edit.data import load_dataset

    return [c.rewrite.as_dict() for c in load_dataset("toyworld-csk", world=toy_world) if c.kind == "simple"][:4]


@pytest.mark.parametrize("editor", ["memit", "alphaedit", "memit_csk", "intattn"])
def test_editor_deltas_equal_one_at_a_time(toy_model, person_records, csk_requests, editor):
    records = person_records[:4]
    if editor == "memit":
        run = lambda **kw: memit(toy_model, records, **FAST, **kw)  # noqa: E731
    elif editor == "alphaedit":
        run = lambda **kw: alphaedit(toy_model, records, **FAST, **kw)  # noqa: E731
    elif editor == "memit_csk":  # at a verb token: no essence rows
        run = lambda **kw: memit_csk(toy_model, csk_requests, edit_token="verb_last", **FAST, **kw)  # noqa: E731
    else:
        fast = {k: v for k, v in FAST.items() if k != "layers"}
        run = lambda **kw: intattn(toy_model, records, alpha=0.3, **fast, **kw)  # noqa: E731
    batched, single = _dense(run()), _dense(run(chunk_size=1))
    assert batched.keys() == single.keys()
    for name in batched:
        assert close(batched[name], single[name]) <= TOL, name
