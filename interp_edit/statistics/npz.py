"""Import and export of the second-moment files ROME, MEMIT and EasyEdit already have.

The layout (read from kmeng01/rome ``rome/layer_stats.py`` and ``util/runningstats.py``; MEMIT
and EasyEdit use the same code): one ``numpy.savez`` file per layer, at
``<stats_dir>/<model>/<dataset>_stats/<module>_<precision>_mom2_<n>.npz`` (with a ``batch_tokens``
budget below the context, ``..._mom2_t{batch_tokens}_<n>.npz``, the braces literally: the code's
suffix is not an f-string) with

- ``mom2.mom2``: the *sum* Σ k kᵀ over the counted tokens, in ``<precision>`` (float32 by default),
- ``mom2.count``: the number of tokens summed (C = mom2 / count),
- ``mom2.constructor``: the Python class that wrote it (a string),
- ``sample_size``: the number of texts (a NaN scalar for "all").

``<module>`` is the Hugging Face name of the module whose *input* the keys are
(``transformer.h.17.mlp.c_proj`` for GPT-2, ``model.layers.5.mlp.down_proj`` for Llama...);
``<model>`` is ``_name_or_path`` with ``/`` → ``_`` (ROME / MEMIT: ``EleutherAI_gpt-j-6B``) or
its last component (EasyEdit: ``gpt-j-6B``). Neither project records more, so an imported
file's provenance is checked against what the path and arrays say: the layer and site from
``<module>``, the key width from ``mom2.mom2``'s shape, the model from ``<model>`` (a file
outside this layout needs ``model_name=`` to say which model it is). Our export writes the
same keys (readable by their code) plus ``interp_edit.*`` keys with the full provenance
(model fingerprint, corpus hash, texts, tokens, dtype), which the importer then checks too.

Their token selection differs slightly from ours: they count every non-padding token (GPT-2's
tokenizer adds no BOS), we leave out the BOS position.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch

from interp_edit.atomic_files import atomic_path
from interp_edit.errors import StatisticsMismatchError
from interp_edit.statistics.provenance import SITES, KeyStatistics, StatsProvenance, check_statistics

#: architecture -> (module whose input is the ``mlp_post`` key, module whose input is the ``z`` key)
HF_MODULES: dict[str, tuple[str, str]] = {
    "GPT2LMHeadModel": ("transformer.h.{}.mlp.c_proj", "transformer.h.{}.attn.c_proj"),
    "GPTJForCausalLM": ("transformer.h.{}.mlp.fc_out", "transformer.h.{}.attn.out_proj"),
    "GPTNeoForCausalLM": ("transformer.h.{}.mlp.c_proj", "transformer.h.{}.attn.attention.out_proj"),
    "GPTNeoXForCausalLM": ("gpt_neox.layers.{}.mlp.dense_4h_to_h", "gpt_neox.layers.{}.attention.dense"),
    "OPTForCausalLM": ("model.decoder.layers.{}.fc2", "model.decoder.layers.{}.self_attn.out_proj"),
    "PhiForCausalLM": ("model.layers.{}.mlp.fc2", "model.layers.{}.self_attn.dense"),
    "FalconForCausalLM": ("transformer.h.{}.mlp.dense_4h_to_h", "transformer.h.{}.self_attention.dense"),
    "BloomForCausalLM": ("transformer.h.{}.mlp.dense_4h_to_h", "transformer.h.{}.self_attention.dense"),
}
#: Llama-style models (Llama, Mistral, Qwen2/3, Gemma...)
LLAMA_MODULES = ("model.layers.{}.mlp.down_proj", "model.layers.{}.self_attn.o_proj")
#: TransformerLens names, for a model of no known architecture
TL_MODULES = ("blocks.{}.mlp.W_out", "blocks.{}.attn.W_O")

_MODULE = re.compile(r"(?:^|\.)(?:h|layers|blocks)\.(\d+)\.(.+)$")
_MLP_TAILS = {"mlp.c_proj", "mlp.fc_out", "mlp.down_proj", "mlp.dense_4h_to_h", "mlp.fc2", "fc2", "mlp.W_out"}
_ATTN_TAILS = {"attn.c_proj", "attn.out_proj", "attn.attention.out_proj", "self_attn.o_proj", "self_attn.out_proj",
               "self_attn.dense", "attention.dense", "self_attention.dense", "attn.W_O"}
_FILE = re.compile(r"^(?P<module>.+)_(?P<precision>float16|float32|float64|bfloat16)_(?P<stats>[a-z0-9_-]+?)(?:_t(?:\d+|\{batch_tokens\}))?(?:_(?P<n>\d+))?$")
PREFIX = "interp_edit."


def module_name(model, site: str, layer: int) -> str:
    """The Hugging Face name of the module whose input is ``site``'s key at ``layer``."""
    from interp_edit.adapter.architecture import architecture

    arch = architecture(model).family
    pair = HF_MODULES.get(arch) or (LLAMA_MODULES if arch.endswith("ForCausalLM") else TL_MODULES)
    return pair[0 if site == "mlp_post" else 1].format(layer)


def parse_module(name: str, path) -> tuple[str, int]:
    """(site, layer) of a module name; a module that is no key site raises."""
    match = _MODULE.search(name)
    if match:
        tail = match.group(2)
        site = "mlp_post" if tail in _MLP_TAILS else "z" if tail in _ATTN_TAILS else None
        if site is not None:
            return site, int(match.group(1))
    raise StatisticsMismatchError(f"statistics file {str(path)!r}: module {name!r} is not an MLP output projection nor an "
                                  "attention output projection, so its inputs are no key site ('mlp_post' or 'z')")


def model_names(model) -> set[str]:
    """The names this model goes by (TransformerLens name, recognised published model), lower-case."""
    from interp_edit.adapter.identity import known_model

    names = {str(model.cfg.model_name)}
    if known_model(model):
        names.add(known_model(model))
    out = set()
    for name in names:
        out |= {name.lower(), name.replace("/", "_").lower(), name.rsplit("/", 1)[-1].lower()}
    return out


def names_match(file_model: str, model) -> bool:
    file_model = file_model.lower()
    return any(file_model == n or file_model.endswith("_" + n) for n in model_names(model))


def _scalar(value):
    value = np.asarray(value)
    if value.dtype.kind == "f" and value.ndim == 0 and np.isnan(value):
        return None
    return value.item() if value.ndim == 0 else value


def _integer(value, what: str, path) -> int:
    """``value`` (a scalar array of the file) as an int: a whole, finite number (not a bool, not
    a string); else :class:`StatisticsMismatchError` naming the file and ``what``."""
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iuf":
        raise StatisticsMismatchError(f"statistics file {str(path)!r}: {what} must be one whole number, got {value!r}")
    number = array.reshape(()).item()
    if not np.isfinite(number) or number != int(number):
        raise StatisticsMismatchError(f"statistics file {str(path)!r}: {what} must be one whole number, got {number!r}")
    return int(number)


def read_npz(path, model, *, layer: int | None = None, site: str | None = None, model_name: str | None = None) -> KeyStatistics:
    """The statistic in a ROME / MEMIT / EasyEdit (or our exported) ``.npz`` file, checked for
    ``model`` (and ``site`` / ``layer`` when given): a file of another model, site, layer or
    key width raises :class:`StatisticsMismatchError` saying which."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as err:
        raise StatisticsMismatchError(f"statistics file {str(path)!r} cannot be read as .npz ({err})") from None
    if "mom2.mom2" not in arrays or "mom2.count" not in arrays:
        raise StatisticsMismatchError(f"statistics file {str(path)!r} has no 'mom2.mom2' / 'mom2.count' (keys: {sorted(arrays)}); "
                                      "it is not a ROME / MEMIT / EasyEdit second-moment file")
    ours = {k[len(PREFIX):]: _scalar(v) for k, v in arrays.items() if k.startswith(PREFIX)}
    parsed = _FILE.match(path.stem)
    if ours.get("site") is not None:
        file_site, file_layer = str(ours["site"]), _integer(ours.get("layer", np.array("")), "'interp_edit.layer'", path)
        if file_site not in SITES:
            raise StatisticsMismatchError(f"statistics file {str(path)!r}: 'interp_edit.site' is {file_site!r}, not a key site "
                                          f"{SITES}")
    elif parsed:
        file_site, file_layer = parse_module(parsed.group("module"), path)
    else:
        raise StatisticsMismatchError(f"statistics file {str(path)!r}: the name is not ROME's "
                                      "'<module>_<precision>_mom2_<n>.npz', so its layer and site are unknown")
    # the model: our provenance's fingerprint, else the <model>/<dataset>_stats/ folders, else the caller's word
    in_layout = path.parent.name.endswith("_stats")
    file_model = ours.get("model_name") or (path.parent.parent.name if in_layout else None)
    fingerprint = ours.get("model_fingerprint")
    if fingerprint is None:
        if file_model is None and model_name is None:
            raise StatisticsMismatchError(
                f"statistics file {str(path)!r} is not in the '<model>/<dataset>_stats/' layout and records no model, so it "
                "cannot be checked against this model; pass model_name= to state which model it is of")
        claimed = model_name or file_model
        if not names_match(claimed, model):
            raise StatisticsMismatchError(f"statistics file {str(path)!r} is of model {claimed!r}; this model is "
                                          f"{sorted(model_names(model))[0]!r} (names: {sorted(model_names(model))})")
        file_model = claimed
    if not 0 <= file_layer < model.cfg.n_layers:
        raise StatisticsMismatchError(f"statistics file {str(path)!r} is of layer {file_layer}; this model has "
                                      f"{model.cfg.n_layers} layers")
    count = _integer(arrays["mom2.count"], "'mom2.count' (the number of tokens summed)", path)
    sums = arrays["mom2.mom2"]
    if sums.dtype.kind not in "iuf":
        raise StatisticsMismatchError(f"statistics file {str(path)!r}: 'mom2.mom2' holds {sums.dtype} values, not real numbers")
    if count < 1 or sums.ndim != 2:
        raise StatisticsMismatchError(f"statistics file {str(path)!r}: count {count} or moment shape {sums.shape} is invalid")
    moment = torch.from_numpy(np.asarray(sums, dtype=np.float64)) / count
    if not torch.isfinite(moment).all():
        raise StatisticsMismatchError(f"statistics file {str(path)!r} holds non-finite values")
    constructor = str(_scalar(arrays.get("mom2.constructor", np.array(""))))
    source = "interp_edit-npz" if ours else "easyedit-npz" if "easyeditor" in constructor else "rome-npz"
    dataset = path.parent.name.removesuffix("_stats") if in_layout else None
    n_texts = ours.get("n_texts", _scalar(arrays["sample_size"]) if "sample_size" in arrays else (int(parsed.group("n")) if parsed and parsed.group("n") else None))
    n_texts = None if n_texts is None else _integer(n_texts, "the sample size (number of texts)", path)
    n_texts = None if n_texts is None or n_texts < 0 else n_texts
    prov = StatsProvenance(
        model_fingerprint=fingerprint or "", site=file_site, layer=file_layer, dim=int(sums.shape[0]),
        corpus=str(ours.get("corpus") or (f"{dataset} (as the file's folder names it)" if dataset else "unknown")),
        corpus_hash=ours.get("corpus_hash") or None, n_texts=n_texts, n_tokens=count,
        dtype=str(ours.get("dtype") or sums.dtype), source=source, path=str(path.resolve()), model_name=file_model,
        file_sha256=hashlib.sha256(path.read_bytes()).hexdigest()[:16])
    stats = KeyStatistics(moment, prov)
    check_statistics(stats, model, site or file_site, file_layer if layer is None else layer, what=f"the statistics in {str(path)!r}")
    from interp_edit.adapter.params import model_fingerprint

    return KeyStatistics(moment, prov.replace(model_fingerprint=model_fingerprint(model)) if not fingerprint else prov)


def find_npz(folder, model, site: str, layers) -> dict[int, Path]:
    """The ``.npz`` second-moment files below ``folder`` for ``model``'s ``site`` at ``layers``
    (ROME layout or ours): {layer: path}. Files of other models or layers are passed over; a
    folder holding only other models' files, or two files for one layer, raises."""
    found: dict[int, list[Path]] = {}
    others: set[str] = set()
    for path in sorted(Path(folder).rglob("*.npz")):
        parsed = _FILE.match(path.stem)
        if not parsed or "mom2" not in parsed.group("stats").split("-"):
            continue
        try:
            file_site, layer = parse_module(parsed.group("module"), path)
        except StatisticsMismatchError:
            continue
        if path.parent.name.endswith("_stats") and not names_match(path.parent.parent.name, model):
            others.add(path.parent.parent.name)
            continue
        if file_site == site and layer in layers:
            found.setdefault(layer, []).append(path)
    twice = {layer: [str(p) for p in paths] for layer, paths in found.items() if len(paths) > 1}
    if twice:
        raise StatisticsMismatchError(f"statistics folder {str(folder)!r} holds several files for layer(s) {twice}; "
                                      "pass stats= the file (or a {layer: file} dict) to use")
    if not found and others:
        raise StatisticsMismatchError(f"statistics folder {str(folder)!r} holds statistics of model(s) {sorted(others)}, "
                                      f"none of this model ({sorted(model_names(model))})")
    return {layer: paths[0] for layer, paths in found.items()}


def write_npz(stats: KeyStatistics, stats_dir, model, *, dataset: str = "interp_edit", precision: str = "float32",
              easyedit: bool = False) -> Path:
    """Write ``stats`` in the ROME / MEMIT layout under ``stats_dir`` (``easyedit=True``: the
    model folder named as EasyEdit names it) with our provenance keys; returns the path."""
    prov = stats.provenance
    check_statistics(stats, model, prov.site, prov.layer, what="the statistics to export")
    name = str(model.cfg.model_name)
    folder = name.rsplit("/", 1)[-1] if easyedit else name.replace("/", "_")
    suffix = f"_{prov.n_texts}" if prov.n_texts is not None else ""
    path = Path(stats_dir) / folder / f"{dataset}_stats" / f"{module_name(model, prov.site, prov.layer)}_{precision}_mom2{suffix}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    sums = (stats.moment.double() * prov.n_tokens).numpy().astype(precision)
    ours = {"model_fingerprint": prov.model_fingerprint, "model_name": name, "site": prov.site, "layer": prov.layer,
            "corpus": prov.corpus, "corpus_hash": prov.corpus_hash or "", "n_texts": -1 if prov.n_texts is None else prov.n_texts,
            "n_tokens": prov.n_tokens, "dtype": precision, "provenance": json.dumps(prov.as_dict(), default=str)}
    arrays = {"mom2.mom2": sums, "mom2.count": np.array(prov.n_tokens), "mom2.constructor": np.array("interp_edit.SecondMoment()"),
              "sample_size": np.array(np.nan if prov.n_texts is None else prov.n_texts),
              **{PREFIX + k: np.array(v) for k, v in ours.items()}}
    with atomic_path(path) as tmp, tmp.open("wb") as handle:  # a file handle: savez would append .npz to a name
        np.savez(handle, **arrays)
    return path


__all__ = ["HF_MODULES", "find_npz", "module_name", "parse_module", "read_npz", "write_npz"]
