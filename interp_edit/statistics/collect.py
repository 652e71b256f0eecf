"""Second-moment statistics of the keys an editor writes through: C = E[k kᵀ] (uncentred),
over the non-padding tokens of a text corpus (by default every one but the BOS), with their
provenance.

Keys are the MLP hidden activations (``mlp_post``, the input of ``W_out``) or the
concatenated attention head outputs (``z``, the input of ``W_O``). Texts are read as
``packing`` says (:data:`PACKINGS`: ours, BOS first and not counted, or ROME's), cut to the
context, sorted by length and batched by token count (:func:`batches`). The forward stops
after the last needed layer; each batch's kᵀk is taken in the hook, in float64, by its lower
triangle (:func:`add_lower_gram`). The
result is cached on disk keyed by the model fingerprint, site, layer, corpus hash, sample
count and packing (cache folder: the ``cache_dir`` argument, else ``$INTERP_EDIT_CACHE``,
else ``~/.cache/interp_edit``). Each cache file carries its
:class:`~interp_edit.statistics.provenance.StatsProvenance` (model fingerprint, site, layer,
key width, corpus and corpus hash, texts, tokens, dtype, packing) in its safetensors
metadata; a file that cannot be read, lacks provenance or whose provenance does not match is
recomputed with a warning.

Corpus (``corpus=``): texts, a text / JSONL file, a folder of them, a ``datasets`` directory, a
hub dataset name or a :class:`~interp_edit.statistics.corpus.Corpus` — see
:mod:`interp_edit.statistics.corpus`; ``None`` means the toy world's own text for the toy-world
model and Wikitext-103 from the hub otherwise (as ROME used Wikipedia). The texts are read
(and a bad corpus refused) before any forward.

Existing statistics (``stats=``): a ROME / MEMIT / EasyEdit ``.npz`` file, a folder of them
(their ``<model>/<dataset>_stats/`` layout), one of our cache ``.safetensors`` files, a
:class:`KeyStatistics`, a list of these or a ``{layer: ...}`` dict; each is checked against
the model, site and layer (:func:`~interp_edit.statistics.provenance.check_statistics`)
and the layers it does not cover are computed from the corpus. See
:mod:`interp_edit.statistics.npz` for the layout.

``n_samples="auto"`` (``stats_samples="auto"`` in an editor's config) grows the sample
until the statistics stop changing what the edit computes: see :func:`auto_statistics`.
"""

from __future__ import annotations

import json
import operator
import os
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp_edit.adapter import applied_edit_stack, forward_to_layer, hook_name, model_fingerprint
from interp_edit.adapter.block_digest import digests_match, key_site_digest
from interp_edit.batching import encode_prompts, pad_right
from interp_edit.errors import CorpusError, EditConfigError, StatisticsMismatchError
from interp_edit.statistics.corpus import Corpus, corpus_hash, describe, read_texts
from interp_edit.statistics.provenance import SITES, KeyStatistics, StatsProvenance, check_statistics, site_dim
from interp_edit.validation import check_int, check_sequence

CACHE_ENV = "INTERP_EDIT_CACHE"
WIKITEXT = ("wikitext", "wikitext-103-raw-v1")
TOY_CORPUS = "toy world default text (CorpusSampler, seed 7919)"
#: ``n_samples="auto"``: the first sample size tried, the growth factor, the default tolerance
AUTO_START = 250
AUTO_GROWTH = 2
AUTO_TOLERANCE = 0.01
#: how texts become the token rows the statistics are taken over (``packing=``):
#: ``"bos"`` (the default): BOS, then the text, cut to the context; BOS is not counted.
#: ``"rome"``: ROME's ``layer_stats`` (``TokenizedDataset``): the tokenizer's own encoding
#: (``encode(text, truncation=True, max_length=n_ctx)``: GPT-2's adds no BOS), cut to the
#: context — the tokens past it are dropped, texts are not concatenated — and every token
#: counted. Cached statistics record their packing; each packing has its own cache files.
PACKINGS = ("bos", "rome")
#: the most tokens (rows × padded width) one forward of the statistics takes
BATCH_TOKENS = 8192

_site_dim = site_dim  # kept for callers of the old name


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    """The statistics cache folder: ``cache_dir``, else ``$INTERP_EDIT_CACHE``, else
    ``~/.cache/interp_edit``. A ``cache_dir`` that is not a path, or a path that is a file, is
    an :class:`EditConfigError` naming it (checked before any statistics are computed)."""
    if cache_dir is not None:
        if isinstance(cache_dir, bool) or not isinstance(cache_dir, (str, os.PathLike)) or not str(cache_dir).strip():
            raise EditConfigError(f"cache_dir must be a folder path (str or Path) or None, got {cache_dir!r}")
        folder = Path(cache_dir)
    elif os.environ.get(CACHE_ENV):
        folder = Path(os.environ[CACHE_ENV])
    else:
        folder = Path.home() / ".cache" / "interp_edit"
    if folder.exists() and not folder.is_dir():
        where = "cache_dir" if cache_dir is not None else f"${CACHE_ENV}" if os.environ.get(CACHE_ENV) else "the cache folder"
        raise EditConfigError(f"{where} {str(folder)!r} is a file, not a folder; give a folder for the statistics cache")
    return folder


def is_toy_default(model, corpus) -> bool:
    from interp_edit.toyworld.model_world import world_spec_of

    return corpus is None and (model.cfg.model_name == "toyworld" or world_spec_of(model) is not None)


def default_corpus(model, n_samples: int) -> list[str]:
    """Training-style text of the model's own toy world for a toy-world model (the world its
    checkpoint names; the shipped world for one that names none), Wikitext-103 otherwise."""
    from interp_edit.toyworld.model_world import world_or_shipped

    if is_toy_default(model, None):
        from interp_edit.toyworld.corpus import CorpusSampler

        sampler = CorpusSampler(world_or_shipped(model), seed=7919)
        return [sampler.sample() for _ in range(n_samples)]
    return hub_corpus(WIKITEXT, n_samples)


def hub_corpus(name: str | tuple[str, ...], n_samples: int) -> list[str]:
    """The first ``n_samples`` non-empty ``text`` fields of a Hugging Face dataset (needs the
    network: :class:`~interp_edit.errors.CorpusUnavailableError` when it is missing)."""
    args = (name,) if isinstance(name, str) else tuple(name)
    return read_texts(Corpus(args[0], name=args[1] if len(args) > 1 else None), n_samples)


def corpus_texts(model, corpus, n_samples: int) -> list[str]:
    """The first ``n_samples`` texts of ``corpus`` (``None``: the model's default corpus); an
    empty or unreadable corpus raises :class:`~interp_edit.errors.CorpusError`."""
    if corpus is None:
        return default_corpus(model, n_samples)
    return read_texts(corpus, n_samples)


def corpus_label(model, corpus) -> str:
    if corpus is None:
        return TOY_CORPUS if is_toy_default(model, None) else describe(Corpus(WIKITEXT[0], name=WIKITEXT[1]))
    return describe(corpus)


# --- computing, with the cache --------------------------------------------------------------

def _corpus_id(model, corpus, texts: Sequence[str] | None, n: int) -> str:
    if texts is None:  # the default toy corpus is a pure function of the world: named, not hashed
        return f"toyworld-default-{n}"
    return f"{corpus_hash(texts)}_{len(texts)}"


def forward_dtype(model) -> str:
    """The dtype the model's forwards run in (its weights'), e.g. ``"float32"``: the keys, so C,
    depend on it, and the fingerprint does not tell a checkpoint loaded in float32 from the
    same loaded in bfloat16."""
    from interp_edit.precision import model_dtype

    return str(model_dtype(model)).removeprefix("torch.")


def _stem(model, site: str, corpus_id: str, packing: str = "bos") -> str:
    """The cache file name's stem; a packing other than the default, a forward dtype other than
    float32, and the context texts are cut to (the fingerprint leaves it out: TransformerLens caps
    some families' ``n_ctx``, the bridge does not, and a long text's C differs) are part of it."""
    dtype = forward_dtype(model)
    return (f"{model_fingerprint(model)}_{site}_{corpus_id}" + ("" if packing == "bos" else f"_{packing}")
            + ("" if dtype == "float32" else f"_{dtype}") + f"_ctx{model.cfg.n_ctx}")


def _cached(model, folder: Path, stem: str, site: str, layers: Sequence[int], packing: str = "bos") -> dict[int, KeyStatistics]:
    found, blocks = {}, {}  # blocks: their weights' sums, read once for all layers
    for layer in layers:
        cached = read_cache(folder / f"{stem}_L{layer}.safetensors", model, site, layer, packing, blocks=blocks)
        if cached is not None:
            found[layer] = cached
    return found


def _texts_for(model, corpus, n: int) -> tuple[list[str] | None, str]:
    """(texts or None for the toy default, corpus id) of the first ``n`` texts."""
    if corpus is None and model.cfg.model_name == "toyworld":
        return None, _corpus_id(model, corpus, None, n)
    texts = corpus_texts(model, corpus, n)
    return texts, _corpus_id(model, corpus, texts, n)


def _require_base(model, missing: Sequence[int]) -> None:
    applied = [entry[0] for entry in applied_edit_stack(model)]
    if applied:  # cached statistics of the base model are fine; new ones are not
        raise EditConfigError(
            f"key statistics of layers {list(missing)} are not cached and must come from the base model, but edits are "
            f"applied to it in place ({[e.method for e in applied]}); compute them before editing "
            "or undo the edits first (the cache is keyed by the base model)"
        )


def _fixed_statistics(model, layers, site, corpus, n_samples, batch_size, cache_dir, progress, *,
                      packing: str = "bos", batch_tokens: int = BATCH_TOKENS) -> dict[int, KeyStatistics]:
    check_packing(packing)
    texts, corpus_id = _texts_for(model, corpus, n_samples)
    folder = cache_folder(cache_dir)
    stem = _stem(model, site, corpus_id, packing)
    found = _cached(model, folder, stem, site, layers, packing)
    missing = [layer for layer in layers if layer not in found]
    if missing:
        for layer in missing:
            check_cache_target(folder / f"{stem}_L{layer}.safetensors")
        _require_base(model, missing)
        if texts is None:
            texts = default_corpus(model, n_samples)
        ids = token_ids(model, texts, corpus, packing)
        sums, count = accumulate(model, missing, site, ids, batch_size=batch_size, batch_tokens=batch_tokens,
                                 progress=progress, packing=packing)
        for layer in missing:
            found[layer] = _store(model, folder / f"{stem}_L{layer}.safetensors", site, layer, sums[layer] / count,
                                  corpus_label(model, corpus), corpus_hash(texts), len(texts), count, packing=packing)
    return found


def token_ids(model, texts: Sequence[str], corpus=None, packing: str = "bos") -> list[list[int]]:
    """Token ids of ``texts`` as ``packing`` reads them (see :data:`PACKINGS`), each cut to the
    model's context; a corpus with no token to count raises :class:`CorpusError` (before any
    forward). ``"bos"``: BOS, then the text's tokens; ``"rome"``: the tokenizer's own encoding
    (its special tokens included), as ROME's ``TokenizedDataset`` does; empty texts are dropped."""
    check_packing(packing)
    if packing == "rome":
        ids = [seq for seq in (model.tokenizer.encode(t, truncation=True, max_length=model.cfg.n_ctx) for t in texts) if seq]
        counted = sum(len(seq) for seq in ids)
    else:
        ids = [seq[: model.cfg.n_ctx] for seq in encode_prompts(model.tokenizer, texts)]
        counted = sum(len(seq) - 1 for seq in ids)
    if not counted:
        raise CorpusError(f"the statistics corpus ({corpus_label(model, corpus)}) has no token "
                          f"{'besides BOS' if packing == 'bos' else 'to count'}")
    return ids


def check_layers_and_site(model, layers, site) -> list[int]:
    """``layers`` (an iterable of layer indices of ``model``, not empty) sorted without
    repeats, and ``site`` one of :data:`SITES`; else an :class:`EditConfigError` naming the
    bad value (checked before any forward)."""
    if site not in SITES:
        raise EditConfigError(f"unknown statistics site {site!r}; choose one of {SITES}")
    items = check_sequence(layers, "statistics layers", error=EditConfigError)
    for i, layer in enumerate(items):
        try:
            if isinstance(layer, bool):
                raise TypeError
            items[i] = operator.index(layer)  # an int, numpy or torch integer; not 1.0, "1" or True
        except TypeError:
            raise EditConfigError(f"statistics layers[{i}] must be an integer, got {layer!r} ({type(layer).__name__})") from None
    if min(items) < 0 or max(items) >= model.cfg.n_layers:
        raise EditConfigError(f"statistics layers {sorted(set(items))} out of range for a {model.cfg.n_layers}-layer model")
    return sorted(set(items))


def check_packing(packing) -> None:
    if packing not in PACKINGS:
        raise EditConfigError(f"argument 'packing' must be one of {sorted(PACKINGS)}, got {packing!r}")


def batches(ids: Sequence[Sequence[int]], *, batch_size: int = 32, batch_tokens: int = BATCH_TOKENS, pad_id: int = 0
            ) -> Iterator[tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]]:
    """Right-padded batches (tokens, lengths) of ``ids``, longest first: each has at most
    ``batch_size`` rows and ``rows × width ≤ batch_tokens`` (a text longer than the budget goes
    alone), as ROME's ``length_collation`` batches by token count. Sorting by length keeps the
    padding small."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batch: list[Sequence[int]] = []
    for i in order:
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * len(batch[0]) > batch_tokens):
            yield pad_right(batch, pad_id)
            batch = []
        batch.append(ids[i])
    if batch:
        yield pad_right(batch, pad_id)


def counted_rows(lengths: Int[Tensor, " batch"], width: int, first: int) -> Int[Tensor, " kept"]:
    """Flat indices (into ``batch · width`` rows) of the positions counted: from ``first`` (1:
    BOS skipped) up to each row's length; padding is never counted. Computed on the CPU, so
    selecting them on the device needs no synchronisation."""
    positions = torch.arange(width)
    keep = (positions[None] < lengths[:, None]) & (positions[None] >= first)
    return keep.reshape(-1).nonzero().squeeze(1)


def add_lower_gram(total: Float[Tensor, "key key"], keys: Float[Tensor, "n key"]) -> None:
    """Add the lower triangle (diagonal included) of kᵀk to ``total``, in ``total``'s dtype, by
    row blocks (a block-wise SYRK: ~56% of a full product's flops); the upper triangle is left
    as it was (:func:`symmetrised` fills it)."""
    keys = keys.to(total.dtype)
    dim = keys.shape[1]
    block = max(128, -(-dim // 8))
    for i in range(0, dim, block):
        end = min(i + block, dim)
        total[i:end, :end].addmm_(keys[:, i:end].T, keys[:, :end])


def symmetrised(total: Float[Tensor, "key key"]) -> Float[Tensor, "key key"]:
    """``total`` with its upper triangle replaced by the mirror of its lower one (in place)."""
    total.copy_(total.tril() + total.tril(-1).T)
    return total


@torch.no_grad()
def accumulate(model, layers: Sequence[int], site: str, ids: Sequence[Sequence[int]], *, batch_size: int = 32,
               batch_tokens: int = BATCH_TOKENS, progress: bool = True, sums: dict[int, Tensor] | None = None,
               packing: str = "bos") -> tuple[dict[int, Tensor], int]:
    """(Σ k kᵀ per layer in float64 on the model's device, number of keys) over the counted
    tokens of ``ids`` (``packing="bos"``: all but the first, the BOS; ``"rome"``: all), padding
    never counted; added to ``sums`` when given. The forward stops after ``max(layers)``.

    Each batch's keys are upcast to float64 (from float32, bfloat16 or float16) and their kᵀk
    added to the sums by its lower triangle only (:func:`add_lower_gram`; the sums are
    symmetrised at the end). A float32 product with float64 flushes is faster still, but its
    ~1e-7 relative error is amplified by C⁻¹ (condition numbers ~10⁴–10⁶) into the edits. The
    counted positions are chosen by indices built on the CPU (no device synchronisation per
    batch) and the product is taken in the hook, so no activation is kept past its layer."""
    from interp_edit.progress import progress_bar

    check_packing(packing)
    first = 1 if packing == "bos" else 0
    dim = site_dim(model, site)
    device = model.cfg.device
    if sums is None:
        sums = {layer: torch.zeros(dim, dim, dtype=torch.float64, device=device) for layer in layers}
    count = 0
    rows: list[Tensor] = []  # the current batch's counted rows (on the device)

    def adder(layer: int):
        def add(act, hook):
            add_lower_gram(sums[layer], act.reshape(-1, dim).index_select(0, rows[0]))

        return add

    hooks = [(hook_name(site, layer), adder(layer)) for layer in layers]
    bar = progress_bar(total=len(ids), desc=f"key statistics ({site}, layers {list(layers)})", disable=not progress, leave=False)
    for tokens, lengths in batches(ids, batch_size=batch_size, batch_tokens=batch_tokens, pad_id=model.tokenizer.pad_token_id or 0):
        index = counted_rows(lengths, tokens.shape[1], first)
        rows[:] = [index.to(device, non_blocking=True)]
        forward_to_layer(model, tokens.to(device, non_blocking=True), max(layers) + 1, [], hooks=hooks)
        count += len(index)
        bar.update(len(lengths))
    bar.close()
    for total in sums.values():
        symmetrised(total)
    return sums, count


def collect_second_moments(model, layers: Sequence[int], site: str, texts: Sequence[str], *,
                           batch_size: int = 32, batch_tokens: int = BATCH_TOKENS, progress: bool = True,
                           packing: str = "bos") -> dict[int, Float[Tensor, "key key"]]:
    """One pass over ``texts`` (no cache): the forward stops after ``max(layers)``.

        moments = collect_second_moments(model, [3, 4], "mlp_post", texts)  # {3: C₃, 4: C₄}
    """
    layers = check_layers_and_site(model, layers, site)
    check_int(batch_size, "batch_size", minimum=1, error=EditConfigError)
    sums, count = accumulate(model, layers, site, token_ids(model, texts, packing=packing), batch_size=batch_size,
                             batch_tokens=batch_tokens, progress=progress, packing=packing)
    return {layer: (total / count).cpu() for layer, total in sums.items()}


def _store(model, path: Path, site, layer, moment, corpus, chash, n_texts, n_tokens, auto=None, packing: str = "bos"
           ) -> KeyStatistics:
    prov = StatsProvenance(model_fingerprint(model), site, layer, site_dim(model, site), corpus, chash, n_texts, n_tokens,
                           "float64", "computed", str(path), auto=auto, packing=packing,
                           extra={"model_dtype": forward_dtype(model), "n_ctx": int(model.cfg.n_ctx),
                                  "blocks_digest": key_site_digest(model, layer, site)})
    stats = KeyStatistics(moment.cpu(), prov)
    write_cache(path, stats)
    return stats


# --- statistics the caller gives ------------------------------------------------------------

def given_statistics(model, stats, site: str, layers: Sequence[int]) -> dict[int, KeyStatistics]:
    """The statistics ``stats`` names (see the module docstring), checked: each must be of this
    model, ``site`` and one of ``layers``."""
    from interp_edit.statistics.npz import find_npz

    wanted = list(layers)
    if isinstance(stats, Mapping):
        items = []
        for layer, value in stats.items():
            try:
                items.append((operator.index(layer) if not isinstance(layer, str) else int(layer), value))
            except (TypeError, ValueError):
                raise StatisticsMismatchError(f"stats= dict keys must be layer numbers, got {layer!r}") from None
    elif isinstance(stats, (list, tuple)):
        items = [(None, value) for value in stats]
    elif isinstance(stats, (str, Path)) and Path(stats).is_dir():
        found = find_npz(stats, model, site, wanted)
        items = [(layer, path) for layer, path in found.items()]
    else:
        items = [(None, stats)]
    out: dict[int, KeyStatistics] = {}
    for layer, value in items:
        one = _one_given(model, value, site, layer)
        if one.provenance.layer not in wanted:
            raise StatisticsMismatchError(f"the given statistics ({one.provenance.path or 'in memory'}) are of layer "
                                          f"{one.provenance.layer}; the edit needs layer(s) {wanted} (site {site!r})")
        out[one.provenance.layer] = one
    return out


def _one_given(model, value, site: str, layer: int | None) -> KeyStatistics:
    from interp_edit.statistics.npz import read_npz

    if isinstance(value, KeyStatistics):
        check_statistics(value, model, site, value.provenance.layer if layer is None else layer, what="the given statistics")
        return value
    if not isinstance(value, (str, Path)):
        raise StatisticsMismatchError(f"stats= items must be paths or KeyStatistics, got {value!r}")
    path = Path(value)
    if not path.is_file():
        raise StatisticsMismatchError(f"statistics file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        stats = load_cache_file(path)
        stats = KeyStatistics(stats.moment, stats.provenance.replace(source="cache"))
        check_statistics(stats, model, site, stats.provenance.layer if layer is None else layer, what=f"the statistics in {str(path)!r}")
        return stats
    return read_npz(path, model, site=site, layer=layer)


# --- our cache files ------------------------------------------------------------------------

def load_cache_file(path: Path) -> KeyStatistics:
    """A cache file with its provenance (an error when it has none or cannot be read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            moment = handle.get_tensor("moment")
    except Exception as err:
        raise StatisticsMismatchError(f"statistics file {str(path)!r} cannot be read ({err})") from None
    if "provenance" not in meta:
        raise StatisticsMismatchError(f"statistics file {str(path)!r} records no provenance (an older cache file)")
    if "crc32" in meta and meta["crc32"] != moment_checksum(moment):
        raise StatisticsMismatchError(
            f"statistics file {str(path)!r}: its moment does not match the checksum written with it (the file was "
            "changed after it was written)")
    try:
        prov = StatsProvenance(**json.loads(meta["provenance"]))
    except (TypeError, ValueError) as err:
        raise StatisticsMismatchError(f"statistics file {str(path)!r} has unreadable provenance ({err})") from None
    if not moment.is_floating_point():
        raise StatisticsMismatchError(f"statistics file {str(path)!r}: its moment holds {moment.dtype} values, not real numbers")
    # float64, as every moment the toolkit computes (a file written in another precision is widened)
    return KeyStatistics(moment.to(torch.float64), prov.replace(path=str(path)))


def read_cache(path: Path, model, site: str, layer: int, packing: str = "bos", *, blocks: dict | None = None
               ) -> KeyStatistics | None:
    """The cached statistic at ``path`` if it is readable, finite and its provenance matches
    (``packing`` included: a file that records none is of the default ``"bos"``, the only one
    before packings were recorded; and the weights that compute the keys,
    :func:`~interp_edit.adapter.block_digest.key_site_digest`, where the file records them and no
    edit is applied in place — the statistics are the base model's); else None, with a warning
    when a file was there. ``blocks``: the blocks' sums, shared by the reads of one model."""
    if not path.is_file():
        return None
    try:
        stats = load_cache_file(path)
        check_statistics(stats, model, site, layer, what=f"the cached statistics {str(path)!r}")
        if (stats.provenance.packing or "bos") != packing:
            raise ValueError(f"its packing is {stats.provenance.packing!r}, not {packing!r}")
        recorded = (stats.provenance.extra or {}).get("model_dtype")
        if recorded is not None and recorded != forward_dtype(model):
            raise ValueError(f"it was computed by the model in {recorded}, not {forward_dtype(model)}")
        cut = (stats.provenance.extra or {}).get("n_ctx")
        if cut is not None and cut != model.cfg.n_ctx:
            raise ValueError(f"its texts were cut to {cut} tokens, this model's context is {model.cfg.n_ctx}")
        blocks_recorded = (stats.provenance.extra or {}).get("blocks_digest")
        if blocks_recorded is not None and not applied_edit_stack(model) and not digests_match(
                blocks_recorded, key_site_digest(model, layer, site, blocks)):
            raise ValueError(f"it was computed by a model whose blocks up to layer {layer} differ from this model's (same "
                             "embeddings, other weights: an edited, merged or fine-tuned checkpoint)")
        if not torch.isfinite(stats.moment).all():
            raise ValueError("non-finite values")
        return KeyStatistics(stats.moment, stats.provenance.replace(source="cache"))
    except Exception as err:
        warnings.warn(f"statistics cache file {path} is unreadable or not this model's ({err}); recomputing it",
                      stacklevel=4)
        return None


def write_cache(path: Path, stats: KeyStatistics) -> None:
    """Write one cache file atomically: parallel sweep workers may write the same file, and a
    writer killed mid-write leaves the cache as it was (its partial file is removed by the
    next write to the folder)."""
    from safetensors.torch import save_file

    from interp_edit.atomic_files import atomic_path

    check_cache_target(path)
    prov = stats.provenance.replace(path=None)
    moment = stats.moment.contiguous()
    with atomic_path(path) as tmp:
        save_file({"moment": moment}, str(tmp),
                  metadata={"provenance": json.dumps(prov.as_dict()), "crc32": moment_checksum(moment)})


def moment_checksum(moment: Tensor) -> str:
    """The CRC-32 of a moment's bytes (as stored), written with a cache file and checked when it
    is read: a file changed after it was written is not used (about 3 GB/s on one CPU core)."""
    data = moment.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"{zlib.crc32(data):08x}"


def check_cache_target(path: Path) -> None:
    """An :class:`EditConfigError` when something other than a file is where a cache file goes
    (checked before any statistics are computed, and again when the file is written)."""
    if path.exists() and not path.is_file():
        raise EditConfigError(f"the statistics cache file {str(path)!r} is a folder (or not a file); move it away "
                              "or give another cache_dir")


__all__ = ["BATCH_TOKENS", "CACHE_ENV", "PACKINGS", "SITES", "KeyStatistics", "StatsProvenance", "accumulate", "batches",
           "cache_folder",
           "collect_second_moments", "corpus_texts", "default_corpus", "given_statistics"]
