"""The retriever's configuration: loss, mining, training defaults, and the values resolved from the bank.

Every field is a YAML key (``loss.tau``, ``mining.per_job``, ...) of the presets in ``vecrag/presets`` and a
``key=value`` override of ``vecrag train retriever``; ``validate()`` rejects bad values with the key's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vecrag.config import TrainConfig, check
from vecrag.models.towers import TowerConfig
from vecrag.train.mining.curriculum import Curriculum

BIG_BANK = 100_000  # from this many bank vectors on, early stopping defaults to R@500 (else R@10)


@dataclass
class LossConfig:
    tau: float = 0.05          # InfoNCE temperature
    margin: float = 0.0        # COSINE units, subtracted from the positive's cosine before / tau
    inbatch: bool = True       # other samples' positives are negatives
    queue: int = 0             # memory-bank size (recent positives' chunk ids; 0 = off)
    window: int = 2            # mask same-article chunks within +-window positions of the positive (-1 = off)
    dup_eps: float = 1e-6      # cos(cand, pos) >= 1 - dup_eps counts as an identical vector (masked)

    def validate(self) -> None:
        check(self.tau > 0, "loss.tau", self.tau, "must be > 0")
        check(0 <= self.margin < 1, "loss.margin", self.margin, "must be in [0, 1) (cosine units)")
        check(self.queue >= 0, "loss.queue", self.queue, "must be >= 0")
        check(self.window >= -1, "loss.window", self.window, "must be >= -1 (-1 = off)")


@dataclass
class MiningConfig:
    mode: str = field(default="sync", metadata={"choices": ("none", "sync", "async")})
    schedule: str = "0-1:none;2-30:8@0.3-0.95"   # see vecrag.train.mining.curriculum
    schedule_base: int = 0     # epochs in the schedule count from 0 (the Trainer's numbering) or 1
    k: int = 64                # candidates searched per query (plus the context length)
    backend: str = field(default="torch", metadata={"choices": ("torch", "faiss", "auto")})
    rel: float = 0.95          # drop cos(q, c) > rel * cos(q, pos) (NV-Retriever); 0 = off
    dup: float = 0.98          # drop cos(c, pos) > dup (near-duplicate); 1 = off
    keep_back: bool = False    # the target article's chunks before the context are exempt from rel
    ttl: int = 20              # async: max age in optimizer steps of the weights behind a result
    timeout: float = 2.0       # async: seconds to wait for a result
    refresh_every: int = 10    # async: optimizer steps between weight copies (must be <= ttl)
    lookahead: int = 8         # async: micro-batches mined ahead
    per_job: int = 4           # async: micro-batches mined in one search (<= lookahead; half the time a batch)
    worker: str = field(default="thread", metadata={"choices": ("thread", "process")})  # async: where mining runs
    # GPU mining: replay each job's kernels from a CUDA graph (vecrag.train.mining.graph). auto: for sync mining
    # and a miner process, not a miner thread (H200, transformer tower: sync 62 -> 81 % of no mining, process
    # 89-90 -> 90-92 %, but thread 92-93 -> 86-87 %; docs/benchmarks.md, session 10)
    cuda_graph: str = field(default="auto", metadata={"choices": ("auto", "on", "off")})
    fallback: str = field(default="sync", metadata={"choices": ("sync", "inbatch")})
    stall: float = 60.0        # async: replace a thread whose job runs longer than this (s)
    max_restarts: int = 3
    fault: str = ""            # fault injection for tests: "raise@N", "crash@N", "hang@N:SECONDS" (comma-sep.)

    def graphs_for(self, thread: bool) -> bool:
        """Whether a mining core captures CUDA graphs under ``cuda_graph`` (``thread``: an async miner thread's
        core, which ``auto`` leaves eager; the sync miner's and a miner process's capture)."""
        return self.cuda_graph == "on" or (self.cuda_graph == "auto" and not thread)

    def validate(self) -> None:
        Curriculum.parse(self.schedule, base=self.schedule_base)
        check(self.k >= 1, "mining.k", self.k, "must be >= 1")
        check(self.timeout > 0, "mining.timeout", self.timeout, "must be > 0 (every wait has a timeout)")
        check(self.ttl >= 0, "mining.ttl", self.ttl, "must be >= 0")
        check(self.refresh_every >= 1, "mining.refresh_every", self.refresh_every, "must be >= 1")
        check(self.lookahead >= 1, "mining.lookahead", self.lookahead, "must be >= 1")
        check(1 <= self.per_job <= self.lookahead, "mining.per_job", self.per_job,
              f"must be in [1, mining.lookahead = {self.lookahead}]")
        # the miner's weights are up to refresh_every steps old when a job starts, so with ttl < refresh_every
        # most async results are discarded as stale and training falls back on nearly every batch
        check(self.mode != "async" or self.ttl >= self.refresh_every, "mining.ttl", self.ttl,
              f"must be >= mining.refresh_every ({self.refresh_every}) in async mode, else most mined batches "
              "arrive stale; e.g. ttl = 2 x refresh_every")
        from vecrag.train.mining.async_miner import parse_faults

        parse_faults(self.fault)


@dataclass
class RetrieverTrainConfig(TrainConfig):
    """The shared TrainConfig with retriever defaults (early stopping on recall, chosen by bank size)."""

    epochs: int = 10
    lr: float = 3e-4
    lr_min: float = 1e-6
    warmup_ratio: float = 0.05
    early_stop_metric: str = "auto"   # auto = R@10 below 100k bank vectors, R@500 above
    patience: int = 3


@dataclass
class RetrieverConfig:
    bank: str = ""
    min_context: int = 1
    val_backend: str = field(default="auto", metadata={"choices": ("torch", "faiss", "auto")})
    train: RetrieverTrainConfig = field(default_factory=RetrieverTrainConfig)
    model: TowerConfig = field(default_factory=TowerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)

    def validate(self) -> None:
        check(self.min_context >= 1, "min_context", self.min_context, "must be >= 1")
        check(self.model.kind != "transformer" or self.train.context <= self.model.max_len, "train.context",
              self.train.context, f"must be <= model.max_len ({self.model.max_len}, the transformer tower's learned "
              "positions); raise model.max_len or shorten the context")
        # while a graph is being captured torch marks the device's default CUDA generator as capturing, and a
        # random op of ANOTHER thread (the trainer's dropout) then raises; sync mining and a miner process capture
        # where nothing else draws from that generator
        m = self.mining
        miner_thread = m.mode == "async" and m.worker == "thread"
        check(not (miner_thread and m.graphs_for(thread=True) and self.model.dropout > 0),
              "mining.cuda_graph", m.cuda_graph,
              f"is not allowed for a miner thread while the tower trains with dropout ({self.model.dropout}): a "
              "capture in the miner's thread makes the trainer's dropout fail on a GPU; use mining.cuda_graph=auto, "
              "mining.worker=process or model.dropout=0")


def resolve_config(cfg: RetrieverConfig, bank) -> RetrieverConfig:
    """Fill bank-dependent values: ``early_stop_metric: auto`` -> R@10 (< 100k vectors) or R@500."""
    if cfg.train.early_stop_metric == "auto":
        cfg.train.early_stop_metric = "R@10" if bank.n < BIG_BANK else "R@500"
        cfg.train.early_stop_mode = "max"
    return cfg
