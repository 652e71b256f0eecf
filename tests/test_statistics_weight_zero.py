"""A statistics weight λ of 0 with fewer keys than the key width makes MEMIT's ``(λC + KKᵀ)``
singular: refused by name before any forward (MEMIT, MEMIT-CSK, PMET, IntAttn-Edit), and a
system singular up to rounding is refused by the solve (``torch.linalg.solve`` returns huge
finite values for it: ΔW 10⁷–10⁹ times the weights')."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp_edit.editing.closed_form import memit_left_factor, solve
from interp_edit.editing.methods.intattn import intattn
from interp_edit.editing.methods.memit import memit
from interp_edit.editing.methods.memit_csk import memit_csk
from interp_edit.editing.methods.pmet import pmet
from interp_edit.errors import EditConfigError, EditOptimizationError
from tests.model_state import refused_before_any_forward

FAST = dict(steps=4, n_prefixes=2, prefix_length=4)


@pytest.mark.parametrize("editor, overrides, field", [
    (memit, dict(layers=(0, 1), mom2_update_weight=0.0), "mom2_update_weight"),
    (memit_csk, dict(layers=(0, 1), mom2_update_weight=0.0), "mom2_update_weight"),
    (pmet, dict(mom2_update_weight=0.0), "mom2_update_weight"),
    (pmet, dict(update_attention=True, attn_mom2_update_weight=0.0), "attn_mom2_update_weight"),
    (intattn, dict(alpha=0.3, mom2_update_weight=0.0), "mom2_update_weight"),
    (intattn, dict(alpha=0.3, attn_mom2_update_weight=0.0), "attn_mom2_update_weight"),
])
def test_a_zero_statistics_weight_with_few_requests_is_refused_before_any_forward(toy_model, person_records, tmp_path,
                                                                                  editor, overrides, field):
    with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match=rf"field '{field}' is 0 with 2 "
                                                                                     r"request\(s\), fewer than the key width"):
        editor(toy_model, person_records[:2], cache_dir=tmp_path, **FAST, **overrides)
    assert not list(tmp_path.iterdir())  # no statistics collected either


def test_enough_keys_or_any_positive_weight_pass_the_check(toy_model):
    from interp_edit.editing.closed_form import check_statistics_weight

    check_statistics_weight(toy_model, 0.0, 10_000, "mlp_post", "mom2_update_weight", "MEMIT")  # enough keys: allowed
    with pytest.raises(EditConfigError, match="key width 512 at mlp_post"):
        check_statistics_weight(toy_model, 0.0, 511, "mlp_post", "mom2_update_weight", "MEMIT")
    check_statistics_weight(toy_model, 1e-3, 1, "mlp_post", "mom2_update_weight", "MEMIT")  # any λ > 0 is fine


def test_a_system_singular_up_to_rounding_is_refused_by_the_solve():
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    # KKᵀ has rank 2 of 64: LAPACK answers with one of infinitely many solutions, set by rounding
    assert np.linalg.matrix_rank(keys.numpy() @ keys.numpy().T) == 2
    with pytest.raises(EditOptimizationError, match=r"the MEMIT layer 3 solve is singular \(its smallest LU pivot is "
                                                    r".*mom2_update_weight.*the model is unchanged"):
        solve(keys @ keys.T, keys, "MEMIT layer 3")
    with pytest.raises(EditOptimizationError, match="singular"):  # and through the MEMIT factor with λ = 0
        memit_left_factor(None, torch.eye(64, dtype=torch.float64), 0.0, keys, "MEMIT layer 3")
    # a well-conditioned system: LAPACK's answer
    matrix = keys @ keys.T + 0.5 * torch.eye(64, dtype=torch.float64)
    expected = np.linalg.solve(matrix.numpy(), keys.numpy())
    assert np.allclose(solve(matrix, keys, "x").numpy(), expected, rtol=1e-12, atol=1e-14)
    # a singular C with λ > 0 (statistics of too few tokens) is warned about where it is read, not refused here
    thin = torch.zeros(64, 64, dtype=torch.float64)
    thin[:10, :10] = torch.eye(10, dtype=torch.float64)
    assert torch.isfinite(solve(thin + keys @ keys.T, keys, "x", near_singular=False)).all()
