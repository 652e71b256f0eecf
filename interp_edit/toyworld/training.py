"""Training the toy-world model from scratch, deterministically (``interp-edit toy train``)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from interp_edit.adapter import build_hooked_transformer, save_checkpoint
from interp_edit.batching import pad_right
from interp_edit.errors import InvalidArgumentError
from interp_edit.progress import progress_bar
from interp_edit.toyworld.corpus import CorpusMixture, CorpusSampler
from interp_edit.toyworld.model_world import WorldSpec, attach_world
from interp_edit.toyworld.tokenizer import build_tokenizer
from interp_edit.toyworld.world import build_world, check_n_people


def _check_counts(owner: str, minimum: int, **values: object) -> None:
    """Raise :class:`InvalidArgumentError` naming the first field that is not an integer >= ``minimum``."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InvalidArgumentError(f"{owner}.{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class ToyModelConfig:
    """Architecture of the toy-world model: GPT-2 blocks (LayerNorm, GELU, learned positions)."""

    n_layers: int = 6
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 64

    def __post_init__(self) -> None:
        _check_counts("ToyModelConfig", 1, n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
                      d_mlp=self.d_mlp, n_ctx=self.n_ctx)
        if self.d_model % self.n_heads:
            raise InvalidArgumentError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")

    def hooked_config(self, d_vocab: int, seed: int) -> dict:
        return dict(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads,
            d_mlp=self.d_mlp,
            n_ctx=self.n_ctx,
            d_vocab=d_vocab,
            d_vocab_out=d_vocab,
            act_fn="gelu_new",
            normalization_type="LN",
            positional_embedding_type="standard",
            default_prepend_bos=True,
            original_architecture="GPT2LMHeadModel",
            model_name="toyworld",
            seed=seed,
        )


@dataclass(frozen=True)
class ToyTrainConfig:
    """Everything that determines the trained toy-world model."""

    world_seed: int = 0
    n_people: int = 400
    seed: int = 0
    steps: int = 1500
    batch_size: int = 128
    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    threads: int = 2
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    mixture: CorpusMixture = field(default_factory=CorpusMixture)

    def __post_init__(self) -> None:
        """Every size and rate checked when the config is made, before a world is built or a step taken."""
        check_n_people(self.n_people)
        _check_counts("ToyTrainConfig", 1, steps=self.steps, batch_size=self.batch_size, threads=self.threads)
        _check_counts("ToyTrainConfig", 0, warmup_steps=self.warmup_steps)
        for name, positive in (("lr", True), ("grad_clip", True), ("weight_decay", False), ("min_lr_ratio", False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (positive and value == 0):
                raise InvalidArgumentError(f"ToyTrainConfig.{name} must be a finite number {'> 0' if positive else '>= 0'}, "
                                           f"got {value!r}")


def learning_rate(step: int, cfg: ToyTrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def train_toy_model(cfg: ToyTrainConfig = ToyTrainConfig(), *, progress: bool = True, log_every: int = 250):
    """Train a toy-world model from scratch. Returns ``(model, world, log)``.

    Deterministic for a given config on a given machine: the world, the tokenizer, the data
    stream and the initialisation all derive from the seeds, and PyTorch's deterministic
    algorithms are switched on while training (without them the multi-threaded embedding
    backward makes two runs drift apart within 40 steps).
    """
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(cfg, progress, log_every)
    finally:
        torch.use_deterministic_algorithms(previous)


def _train(cfg: ToyTrainConfig, progress: bool, log_every: int):
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    world = build_world(cfg.world_seed, cfg.n_people)
    tokenizer = build_tokenizer(world)
    model = build_hooked_transformer(cfg.model.hooked_config(len(tokenizer), cfg.seed), tokenizer)
    model.train()
    # GPT-2's lm_head has no bias: keep b_U at zero so the model exports to Hugging Face exactly.
    model.b_U.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    sampler = CorpusSampler(world, cfg.seed, cfg.mixture)
    pad = tokenizer.pad_token_id
    log: list[dict] = []
    start = time.perf_counter()
    bar = progress_bar(range(cfg.steps), desc="toy train", disable=not progress)
    batches: list[list[list[int]]] = []
    for step in bar:
        if not batches:
            batches = _length_bucketed_batches(sampler, tokenizer, cfg)
        tokens, lengths = pad_right(batches.pop(), pad)
        logits = model(tokens[:, :-1], return_type="logits")
        targets = tokens[:, 1:]
        mask = torch.arange(targets.shape[1])[None, :] < (lengths[:, None] - 1)
        loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        if step % log_every == 0 or step == cfg.steps - 1:
            entry = {"step": step, "loss": round(loss.item(), 4), "seconds": round(time.perf_counter() - start, 1)}
            log.append(entry)
            bar.set_postfix(loss=entry["loss"])
    model.eval()
    attach_world(model, WorldSpec.of(world))
    return model, world, log


def _length_bucketed_batches(sampler: CorpusSampler, tokenizer, cfg: ToyTrainConfig, pool: int = 8) -> list[list[list[int]]]:
    """``pool`` batches of texts with similar token lengths (less padding), in seeded order."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    texts = [sampler.sample() for _ in range(cfg.batch_size * pool)]
    seqs = [([bos] + tokenizer.encode(t, add_special_tokens=False) + [eos])[: cfg.model.n_ctx] for t in texts]
    seqs.sort(key=len)
    batches = [seqs[i : i + cfg.batch_size] for i in range(0, len(seqs), cfg.batch_size)]
    sampler.rng.shuffle(batches)
    return batches


def train_and_save(cfg: ToyTrainConfig, folder: Path, *, progress: bool = True) -> dict:
    """Train, evaluate and write a checkpoint folder. Returns the evaluation metrics."""
    from interp_edit.toyworld.evaluation import evaluate_toyworld

    model, world, log = train_toy_model(cfg, progress=progress)
    metrics = evaluate_toyworld(model, world)
    save_checkpoint(
        model,
        folder,
        extra={"world": WorldSpec(cfg.world_seed, cfg.n_people).as_section(), "training": _jsonable(asdict(cfg)),
               "training_log": log, "metrics": metrics},
    )
    return metrics


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return list(obj)
    return obj
