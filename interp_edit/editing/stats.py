"""Second-moment statistics of the keys an editor writes through: C = E[k kᵀ] (uncentred),
over every non-padding, non-BOS token of a text corpus.

Keys are the MLP hidden activations (``mlp_post``, the input of ``W_out``) or the
concatenated attention head outputs (``z``, the input of ``W_O``). The forward stops after
the last needed layer, accumulates in float64, and the result is cached on disk keyed by
the model fingerprint, site, layer, corpus hash and sample count (cache folder: the
``cache_dir`` argument, else ``$INTERP_EDIT_CACHE``, else ``~/.cache/interp_edit``). A cache
file that cannot be read is recomputed with a warning.

Corpus: any iterable of strings; a string names a Hugging Face dataset (loaded with
``datasets``, needs a hub or a local copy); ``None`` means the toy world's own text for the
toy-world model and Wikitext-103 otherwise (as ROME used Wikipedia).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.batching import encode_prompts, pad_right
from interp_edit.errors import EditConfigError
from interp_edit.model import forward_to_layer, hook_name, model_fingerprint

SITES = ("mlp_post", "z")
CACHE_ENV = "INTERP_EDIT_CACHE"
WIKITEXT = ("wikitext", "wikitext-103-raw-v1")


def cache_folder(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path.home() / ".cache" / "interp_edit"


def default_corpus(model, n_samples: int) -> list[str]:
    """Training-style text of the model's own toy world for a toy-world model (the world its
    checkpoint names; the shipped world for one that names none), Wikitext-103 otherwise."""
    from interp_edit.toyworld.model_world import world_or_shipped, world_spec_of

    if model.cfg.model_name == "toyworld" or world_spec_of(model) is not None:
        from interp_edit.toyworld.corpus import CorpusSampler

        sampler = CorpusSampler(world_or_shipped(model), seed=7919)
        return [sampler.sample() for _ in range(n_samples)]
    return hub_corpus(WIKITEXT, n_samples)


def hub_corpus(name: str | tuple[str, ...], n_samples: int) -> list[str]:
    """The first ``n_samples`` non-empty ``text`` fields of a Hugging Face dataset."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets comes with transformer-lens
        raise EditConfigError(f"loading the corpus {name!r} needs the 'datasets' package: {err}") from None
    args = (name,) if isinstance(name, str) else tuple(name)
    try:
        data = datasets.load_dataset(*args, split="train", streaming=True)
    except Exception as err:
        raise EditConfigError(
            f"cannot load the statistics corpus {args!r} from the Hugging Face hub ({err}); pass corpus= an "
            "iterable of strings instead"
        ) from None
    texts = (row["text"] for row in data if row.get("text", "").strip())
    return list(itertools.islice(texts, n_samples))


def corpus_texts(model, corpus, n_samples: int) -> list[str]:
    if corpus is None:
        return default_corpus(model, n_samples)
    if isinstance(corpus, (str, tuple)):
        return hub_corpus(corpus, n_samples)
    texts = list(itertools.islice(iter(corpus), n_samples))
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise EditConfigError(f"corpus item {bad[0]} is not a string: {texts[bad[0]]!r}")
    return [t for t in texts if t.strip()]


def corpus_hash(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:12]


def _site_dim(model, site: str) -> int:
    return model.cfg.d_mlp if site == "mlp_post" else model.cfg.n_heads * model.cfg.d_head


def second_moments(
    model,
    layers: Iterable[int],
    *,
    site: str = "mlp_post",
    corpus: Iterable[str] | str | None = None,
    n_samples: int = 2000,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[int, Float[Tensor, "key key"]]:
    """C = E[k kᵀ] (float64, on the CPU) of the keys at ``site`` for each of ``layers``,
    from disk when cached; the layers not cached share one pass over the corpus."""
    layers = sorted(set(int(layer) for layer in layers))
    if site not in SITES:
        raise EditConfigError(f"unknown statistics site {site!r}; choose one of {SITES}")
    if not layers or min(layers) < 0 or max(layers) >= model.cfg.n_layers:
        raise EditConfigError(f"statistics layers {layers} out of range for a {model.cfg.n_layers}-layer model")
    if n_samples < 1:
        raise EditConfigError(f"n_samples must be >= 1, got {n_samples}")
    if corpus is None and model.cfg.model_name == "toyworld":
        # the default toy corpus is a pure function of the world: name it instead of hashing it,
        # so a cached statistic costs no text generation
        texts, corpus_id = None, f"toyworld-default-{n_samples}"
    else:
        texts = corpus_texts(model, corpus, n_samples)
        if not texts:
            raise EditConfigError("the statistics corpus is empty")
        corpus_id = f"{corpus_hash(texts)}_{len(texts)}"
    folder = cache_folder(cache_dir)
    stem = f"{model_fingerprint(model)}_{site}_{corpus_id}"
    found: dict[int, Tensor] = {}
    for layer in layers:
        cached = _read_cache(folder / f"{stem}_L{layer}.safetensors", _site_dim(model, site))
        if cached is not None:
            found[layer] = cached
    missing = [layer for layer in layers if layer not in found]
    if missing:
        from interp_edit.editing.edit import applied_edits

        if applied_edits(model):  # cached statistics of the base model are fine; new ones are not
            raise EditConfigError(
                f"key statistics of layers {missing} are not cached and must come from the base model, but edits are "
                f"applied to it in place ({[e.method for e in applied_edits(model)]}); compute them before editing "
                "or undo the edits first (the cache is keyed by the base model)"
            )
        if texts is None:
            texts = default_corpus(model, n_samples)
        computed = collect_second_moments(model, missing, site, texts, batch_size=batch_size, progress=progress)
        for layer, moment in computed.items():
            _write_cache(folder / f"{stem}_L{layer}.safetensors", moment)
        found.update(computed)
    return {layer: found[layer] for layer in layers}


@torch.no_grad()
def collect_second_moments(model, layers: Sequence[int], site: str, texts: Sequence[str], *,
                           batch_size: int = 32, progress: bool = True) -> dict[int, Float[Tensor, "key key"]]:
    """One pass over ``texts`` (no cache): the forward stops after ``max(layers)``."""
    from interp_edit.progress import progress_bar

    names = {hook_name(site, layer): layer for layer in layers}
    dim = _site_dim(model, site)
    sums = {layer: torch.zeros(dim, dim, dtype=torch.float64, device=model.cfg.device) for layer in layers}
    count = 0
    ids = [seq[: model.cfg.n_ctx] for seq in encode_prompts(model.tokenizer, texts)]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
    bar = progress_bar(total=len(ids), desc=f"key statistics ({site}, layers {list(layers)})", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        batch = [ids[i] for i in order[start : start + batch_size]]
        tokens, lengths = pad_right(batch, model.tokenizer.pad_token_id or 0)
        tokens = tokens.to(model.cfg.device)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        keep = (positions[None] < lengths.to(tokens.device)[:, None]) & (positions[None] > 0)  # no pad, no BOS
        cache = forward_to_layer(model, tokens, max(layers) + 1, list(names))
        for name, layer in names.items():
            keys = cache[name][keep].reshape(int(keep.sum()), dim).double()
            sums[layer].addmm_(keys.T, keys)
        count += int(keep.sum())
        bar.update(len(batch))
    bar.close()
    return {layer: (total / max(count, 1)).cpu() for layer, total in sums.items()}


def _read_cache(path: Path, dim: int) -> Tensor | None:
    if not path.is_file():
        return None
    try:
        from safetensors.torch import load_file

        moment = load_file(str(path))["moment"]
        if moment.shape != (dim, dim) or not torch.isfinite(moment).all():
            raise ValueError(f"shape {tuple(moment.shape)} or non-finite values")
        return moment
    except Exception as err:
        warnings.warn(f"statistics cache file {path} is unreadable ({err}); recomputing it", stacklevel=3)
        return None


def _write_cache(path: Path, moment: Tensor) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # parallel sweep workers may write the same file
    save_file({"moment": moment.contiguous()}, str(tmp))
    tmp.replace(path)
