"""Writes that cannot leave a truncated file: edits, statistics caches and exports, experiment
rows and results, sweep results. Each writer is interrupted at the last moment (the rename),
by an exception and by ``SIGKILL`` of a real process: the previous good file survives, and
no temporary file is left (a killed writer's is removed by the next write to its folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from interp_edit import atomic_files
from interp_edit.atomic_files import atomic_path, partial_files, remove_stale_partials
from interp_edit.editing import Edit
from interp_edit.editing.edit import LowRankDelta
from interp_edit.statistics.collect import load_cache_file, write_cache
from interp_edit.statistics.provenance import KeyStatistics, StatsProvenance


def small_edit(model, scale: float = 1.0) -> Edit:
    from interp_edit.adapter import model_fingerprint

    d_mlp, d_model = model.cfg.d_mlp, model.cfg.d_model
    delta = LowRankDelta(torch.full((d_mlp, 1), scale * 1e-3), torch.ones(1, d_model))
    return Edit("rome", {"blocks.0.mlp.W_out": delta}, model_fingerprint(model))


def key_stats(model, value: float) -> KeyStatistics:
    from interp_edit.adapter import model_fingerprint

    d = model.cfg.d_mlp
    prov = StatsProvenance(model_fingerprint=model_fingerprint(model), site="mlp_post", layer=0, dim=d, corpus="test",
                           corpus_hash="h", n_texts=3, n_tokens=30, dtype="float64", source="computed")
    return KeyStatistics(torch.eye(d, dtype=torch.float64) * value, prov)


class Interrupted(BaseException):
    pass


def interrupt_rename(monkeypatch):
    """Every atomic write dies just before its rename (as a crash would)."""

    def dies(src, dst):
        raise Interrupted(f"killed before renaming {src}")

    monkeypatch.setattr(atomic_files.os, "replace", dies)


def test_an_interrupted_block_keeps_the_previous_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "rows.json"
    target.write_text("good")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "good" and partial_files(tmp_path) == []


def test_edit_save_interrupted_keeps_the_previous_edit(toy_model, tmp_path, monkeypatch):
    first, second = small_edit(toy_model, 1.0), small_edit(toy_model, 2.0)
    path = first.save(tmp_path / "edit")
    interrupt_rename(monkeypatch)
    with pytest.raises(Interrupted):
        second.save(path)
    assert Edit.load(path, toy_model).content_hash() == first.content_hash()
    assert partial_files(tmp_path) == []


def test_statistics_cache_and_export_interrupted_keep_the_previous_file(toy_model, tmp_path, monkeypatch):
    from interp_edit.statistics.npz import read_npz, write_npz

    cache = tmp_path / "cache" / "layer0.safetensors"
    write_cache(cache, key_stats(toy_model, 2.0))
    exported = write_npz(key_stats(toy_model, 2.0), tmp_path / "npz", toy_model)
    interrupt_rename(monkeypatch)
    with pytest.raises(Interrupted):
        write_cache(cache, key_stats(toy_model, 5.0))
    with pytest.raises(Interrupted):
        write_npz(key_stats(toy_model, 5.0), tmp_path / "npz", toy_model)
    assert float(load_cache_file(cache).moment[0, 0]) == 2.0
    assert float(read_npz(exported, toy_model).moment[0, 0]) == pytest.approx(2.0)
    assert partial_files(cache.parent) == [] and partial_files(exported.parent) == []


def test_experiment_and_sweep_results_interrupted_keep_the_previous_file(tmp_path, monkeypatch):
    from interp_edit.evaluation.experiment import ExperimentResult

    settings = {"method": "rome", "dataset": "d", "n": 1, "batch_size": 1, "sequential": False}
    result = ExperimentResult(settings=settings, baseline={"metrics": {}}, batches=[], wall_seconds=1.0)
    json_path = result.save(tmp_path / "summary", figure=False)[0]
    before = json_path.read_text()
    interrupt_rename(monkeypatch)
    changed = ExperimentResult(settings=settings, baseline={"metrics": {}}, batches=[], wall_seconds=2.0)
    with pytest.raises(Interrupted):
        changed.save(tmp_path / "summary", figure=False)
    assert json_path.read_text() == before and partial_files(tmp_path) == []


def test_sweep_results_interrupted_keep_the_previous_files(toy_model, tmp_path, monkeypatch):
    from interp_edit.sweep import run_sweep
    from interp_edit.sweep.runner import SPEC_FILE, SUMMARY_FILE

    fast = {"layer": 0, "steps": 2, "n_prefixes": 1, "prefix_length": 3}
    spec = {"models": ["toyworld"], "editors": [{"method": "rome", "config": fast}],
            "datasets": [{"name": "toyworld-counterfact", "n": 1}], "unrelated": 2, "fluency": False}
    sweep = run_sweep(spec, tmp_path / "sweep", models={"toyworld": toy_model}, progress=False)
    files = [tmp_path / "sweep" / SPEC_FILE, *sweep.save(tmp_path / "table", figure=False),
             *(tmp_path / "sweep").rglob(SUMMARY_FILE), *(tmp_path / "sweep").rglob("cell.json")]
    assert len(files) == 5
    before = {f: f.read_bytes() for f in files}
    interrupt_rename(monkeypatch)
    with pytest.raises(Interrupted):
        sweep.save(tmp_path / "table", figure=False)
    spec["unrelated"] = 3  # another spec: its sweep.json would be rewritten
    with pytest.raises(Interrupted):
        run_sweep(spec, tmp_path / "sweep", models={"toyworld": toy_model}, progress=False)
    assert {f: f.read_bytes() for f in files} == before
    assert not any(partial_files(f.parent) for f in files)


def test_experiment_rows_rewrite_on_resume_is_atomic(toy_model, tmp_path, monkeypatch):
    """A resumed run that finds a cut last line rewrites the rows file: interrupted, the
    original lines (and the cut one) are still there."""
    from interp_edit.evaluation import run_experiment
    from interp_edit.evaluation.runner import RESULTS_FILE

    kwargs = dict(n=1, unrelated=2, fluency=False, progress=False, config={"steps": 2, "n_prefixes": 1, "prefix_length": 3})
    run_experiment(toy_model, "toyworld-counterfact", "rome", out=tmp_path, **kwargs)
    rows = tmp_path / RESULTS_FILE
    text = rows.read_text()
    cut = text + '{"type": "batch", "bat'
    rows.write_text(cut)
    interrupt_rename(monkeypatch)
    with pytest.raises(Interrupted):
        run_experiment(toy_model, "toyworld-counterfact", "rome", out=tmp_path, **kwargs)
    assert rows.read_text() == cut and partial_files(tmp_path) == []


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    import safetensors.torch as st
    from interp_edit.editing import Edit

    def slow(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"x" * 4096)
            handle.flush()
        print("writing", flush=True)
        time.sleep(120)

    st.save_file = slow
    Edit.load(sys.argv[1]).save(sys.argv[1])
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_writer_killed_mid_write_leaves_the_previous_edit_and_its_partial_is_swept(toy_model, tmp_path):
    first = small_edit(toy_model, 1.0)
    path = first.save(tmp_path / "edit")
    good = path.read_bytes()
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert writer.stdout.readline().strip() == "writing"
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert path.read_bytes() == good  # the previous good file, untouched
    assert Edit.load(path, toy_model).content_hash() == first.content_hash()
    stray = partial_files(tmp_path)
    assert len(stray) == 1 and str(writer.pid) in stray[0].name  # the killed writer could not clean up ...
    small_edit(toy_model, 3.0).save(tmp_path / "other")  # ... the next write to the folder does
    assert partial_files(tmp_path) == []


def test_partials_of_running_writers_are_kept(tmp_path):
    mine = tmp_path / f".x.json.{os.getpid()}.0123abcd.partial"
    mine.write_text("in progress")
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = tmp_path / f".x.json.{int(done.stdout)}.89abcdef.partial"
    dead.write_text("left by a dead writer")
    time.sleep(0.05)
    assert remove_stale_partials(tmp_path) == [dead]
    assert mine.exists() and not dead.exists()
    np.testing.assert_equal(len(partial_files(tmp_path)), 1)
