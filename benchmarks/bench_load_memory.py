"""Memory to load a Hugging Face model with ``load_model``: peak above the start, divided by the
weights' bytes (in the target dtype), for a folder and an object on both backends, against
today's whole-model conversion (TransformerLens' ``get_pretrained_state_dict`` +
``load_and_process_state_dict``, called here directly) as the baseline.

    python benchmarks/bench_load_memory.py                      # CPU, bf16, ~0.85 B Llama shape
    python benchmarks/bench_load_memory.py --device cuda --shape llama3-8b

Each case runs in a fresh subprocess: on CPU the peak is the process' resident-memory high-water
mark above the start (``PeakRSS``); on CUDA ``torch.cuda.max_memory_allocated`` above the start
(the host's peak RSS is printed too). The model is a random Llama-style one built on the meta
device and filled cheaply (no slow random init), saved once as safetensors; an object case
builds its own on the device before the measurement starts. Prints ``key=value`` lines;
:func:`measure` returns them as a dict (for ``benchmarks/gpu_suite.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHAPES = {
    "1b": dict(layers=16, hidden=2048, intermediate=5632, heads=32, kv_heads=8, vocab=32000),
    "llama3-8b": dict(layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=128256),
    "tiny": dict(layers=2, hidden=128, intermediate=256, heads=4, kv_heads=2, vocab=1200),  # >= the toy tokenizer's 1,113
}

#: case -> (input, backend); the baselines are today's path (TransformerLens' whole-model conversion)
CASES = {
    "folder_hooked": ("folder", "hooked"),
    "object_hooked": ("object", "hooked"),
    "folder_bridge": ("folder", "bridge"),
    "object_bridge": ("object", "bridge"),
    "baseline_folder_hooked": ("folder", "baseline"),
    "baseline_object_hooked": ("object", "baseline"),
}

DTYPES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


def random_llama(shape: dict, dtype, device):
    """A Llama-style ``LlamaForCausalLM`` of ``shape`` on ``device`` in ``dtype``: built with its
    parameters on the meta device (accelerate), then each one allocated there and filled with
    uniform noise (norm gains 1); buffers (rotary frequencies) are the real ones."""
    import torch
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["kv_heads"], vocab_size=shape["vocab"],
                         max_position_embeddings=2048, tie_word_embeddings=False)
    with init_empty_weights(include_buffers=False):
        model = LlamaForCausalLM(config)
    generator = torch.Generator(device=device).manual_seed(0)
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            value = torch.empty(param.shape, dtype=dtype, device=device)
            if param.dim() == 1:
                value.fill_(1.0)
            else:
                value.uniform_(-0.02, 0.02, generator=generator)
            module._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
    return model.to(device).eval()


def _n_params(shape: dict) -> int:
    h, kv_dim = shape["hidden"], shape["hidden"] // shape["heads"] * shape["kv_heads"]
    layer = 2 * h * h + 2 * h * kv_dim + 3 * h * shape["intermediate"] + 2 * h
    return shape["layers"] * layer + 2 * shape["vocab"] * h + h


def _child(case: str, folder: str, device: str, dtype_name: str, shape: dict) -> dict:
    """One case, measured in this (fresh) process."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    import logging

    from transformer_lens import HookedTransformer  # noqa: F401  (imports before the start)
    from transformer_lens import loading_from_pretrained as loading

    from benchmarks.common import PeakRSS
    from interp_edit import load_model
    from interp_edit.adapter.loading import hooked_config

    logging.disable(logging.WARNING)
    dtype = getattr(torch, DTYPES[dtype_name])
    source, backend = CASES[case]
    tokenizer = load_model("toyworld").tokenizer
    hf = random_llama(shape, dtype, device) if source == "object" else None
    cuda = device.startswith("cuda")

    def run():
        if backend != "baseline":
            name = "random" if hf is not None else folder
            return load_model(name, hf_model=hf, tokenizer=tokenizer, backend=backend, dtype=dtype, device=device)
        # today's path: the whole model read (from a folder), converted, built, processed
        from transformers import AutoModelForCausalLM

        model = hf if hf is not None else AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        cfg = hooked_config(model.config, architecture=type(model).__name__, device=device, dtype=dtype)
        with tempfile.TemporaryDirectory() as tmp:
            state = loading.get_pretrained_state_dict(tmp, cfg, model, dtype=dtype)
        out = HookedTransformer(cfg, tokenizer, move_to_device=False, default_padding_side="right")
        out.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=True, center_unembed=True,
                                        fold_value_biases=True)
        del state
        out.move_model_modules_to_device()
        return out

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_gpu = torch.cuda.memory_allocated()
    begin = time.perf_counter()
    try:
        with PeakRSS() as rss:
            model = run()
            if cuda:
                torch.cuda.synchronize()
    except torch.OutOfMemoryError as err:
        return {"error": f"out of memory: {str(err).splitlines()[0][:120]}"}
    out = {"seconds": time.perf_counter() - begin, "host_peak_bytes": rss.extra}
    if cuda:
        out["device_peak_bytes"] = torch.cuda.max_memory_allocated() - start_gpu
        out["device_kept_bytes"] = torch.cuda.memory_allocated() - start_gpu
    del model
    return out


def _build(folder: str, device: str, dtype_name: str, shape: dict) -> None:
    import torch

    torch.set_num_threads(1)
    random_llama(shape, getattr(torch, DTYPES[dtype_name]), device).save_pretrained(folder)


def _subprocess(args: list[str], timeout: float) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1][len("RESULT "):])


def measure(device: str = "cpu", dtype: str = "bf16", shape: str | dict = "1b", cases=tuple(CASES),
            timeout: float = 600) -> dict:
    """``key=value`` results of the loading cases (each in a fresh subprocess) for a random
    Llama-style model of ``shape`` (a name of :data:`SHAPES` or a dict like them) in ``dtype``
    (``"bf16"``, ``"fp32"``, ``"fp16"``) on ``device``: per case ``load_<case>_peak_over_weights``
    (device memory on CUDA, resident memory on CPU), ``load_<case>_seconds``, on CUDA also
    ``load_<case>_kept_over_weights`` and ``load_<case>_host_peak_over_weights``; and the
    streamed cases' peaks over the baseline's."""
    shape_dict = SHAPES[shape] if isinstance(shape, str) else dict(shape)
    weights = _n_params(shape_dict) * (4 if dtype == "fp32" else 2)
    out: dict = {"load_weights_gib": round(weights / 2**30, 3), "load_params_billions": round(_n_params(shape_dict) / 1e9, 3),
                 "load_device": device, "load_dtype": dtype}
    spec = json.dumps(shape_dict)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as folder:
        begin = time.perf_counter()
        if any(CASES[c][0] == "folder" for c in cases):
            built = _subprocess(["--build", folder, device, dtype, spec], timeout)
            if "error" in built:
                out["load_build_error"] = built["error"]
                return out
        out["load_build_seconds"] = round(time.perf_counter() - begin, 1)
        for case in cases:
            result = _subprocess(["--child", case, folder, device, dtype, spec], timeout)
            if "error" in result:
                out[f"load_{case}_error"] = result["error"]
                continue
            cuda = "device_peak_bytes" in result
            out[f"load_{case}_peak_over_weights"] = round(result["device_peak_bytes" if cuda else "host_peak_bytes"] / weights, 3)
            out[f"load_{case}_seconds"] = round(result["seconds"], 2)
            if cuda:
                out[f"load_{case}_kept_over_weights"] = round(result["device_kept_bytes"] / weights, 3)
                out[f"load_{case}_host_peak_over_weights"] = round(result["host_peak_bytes"] / weights, 3)
    for case in ("folder_hooked", "object_hooked"):
        base = out.get(f"load_baseline_{case}_peak_over_weights")
        if base and f"load_{case}_peak_over_weights" in out:
            out[f"load_{case}_peak_vs_baseline"] = round(out[f"load_{case}_peak_over_weights"] / base, 3)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--child", "--build"):
        if sys.argv[1] == "--build":
            _build(sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]))
            print("RESULT {}")
        else:
            print("RESULT " + json.dumps(_child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], json.loads(sys.argv[6]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--shape", default="1b", choices=sorted(SHAPES))
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    args = parser.parse_args()
    for key, value in measure(args.device, args.dtype, args.shape, tuple(args.cases.split(","))).items():
        print(f"{key}={value}")


if __name__ == "__main__":
    main()
