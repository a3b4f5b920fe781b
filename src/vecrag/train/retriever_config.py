"""The retriever's configuration: loss, mining, training defaults, and the values resolved from the bank.

Every field is a YAML key (``loss.tau``, ``mining.per_job``, ...) of the presets in ``vecrag/presets`` and a
``key=value`` override of ``vecrag train retriever``; ``validate()`` rejects bad values with the key's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from vecrag.config import TrainConfig, check
from vecrag.models.towers import TowerConfig
from vecrag.train.mining.curriculum import Curriculum


class MiningMode(StrEnum):
    """The values of ``mining.mode``: no mined negatives, mined in the step, or mined ahead."""

    NONE = "none"
    SYNC = "sync"
    ASYNC = "async"


class Worker(StrEnum):
    """The values of ``mining.worker``: where an async miner runs."""

    THREAD = "thread"
    PROCESS = "process"

BIG_BANK = 100_000  # from this many bank vectors on, early stopping defaults to R@500 (else R@10)


@dataclass
class LossConfig:
    tau: float = field(default=0.05, metadata={"help": "InfoNCE temperature (logits = cosine / tau)"})
    margin: float = field(default=0.0, metadata={"help": "subtracted from the positive's cosine before / tau, in "
                                                         "COSINE units, in [0, 1)"})
    inbatch: bool = field(default=True, metadata={"help": "other samples' positives are negatives"})
    queue: int = field(default=0, metadata={"help": "memory-bank size: recent positives' chunk ids used as "
                                                    "negatives (0 = off)"})
    window: int = field(default=2, metadata={"help": "mask same-article chunks within +-window positions of the "
                                                     "positive (-1 = off)"})
    dup_eps: float = field(default=1e-6, metadata={"help": "cos(cand, pos) >= 1 - dup_eps counts as an identical "
                                                           "vector (masked)"})

    def validate(self) -> None:
        check(self.tau > 0, "loss.tau", self.tau, "must be > 0")
        check(0 <= self.margin < 1, "loss.margin", self.margin, "must be in [0, 1) (cosine units)")
        check(self.queue >= 0, "loss.queue", self.queue, "must be >= 0")
        check(self.window >= -1, "loss.window", self.window, "must be >= -1 (-1 = off)")


@dataclass
class MiningConfig:
    mode: str = field(default="sync", metadata={"choices": tuple(MiningMode),
                                                "help": "hard-negative mining: none, sync (in the training step) or "
                                                        "async (in the background, with mined batches ahead)"})
    schedule: str = field(default="0-1:none;2-30:8@0.3-0.95",
                          metadata={"help": "curriculum: ;-separated FIRST-LAST:none or FIRST-LAST:N@LO-HI phases (N "
                                            "negatives whose cosine to the query lies in [LO, HI]; see "
                                            "vecrag.train.mining.curriculum)"})
    schedule_base: int = field(default=0, metadata={"help": "epochs in the schedule count from 0 (the Trainer's "
                                                            "numbering) or 1"})
    k: int = field(default=64, metadata={"help": "candidates searched per query (plus the context length)"})
    backend: str = field(default="torch", metadata={"choices": ("torch", "faiss", "auto"),
                                                    "help": "the mining search: exact torch, the bank's FAISS index, "
                                                            "or auto (the index when there is one)"})
    rel: float = field(default=0.95, metadata={"help": "drop cos(q, c) > rel * cos(q, pos) (NV-Retriever); 0 = off"})
    dup: float = field(default=0.98, metadata={"help": "drop cos(c, pos) > dup (a near-duplicate of the positive); "
                                                       "1 = off"})
    keep_back: bool = field(default=False, metadata={"help": "the target article's chunks before the context are "
                                                             "exempt from rel"})
    ttl: int = field(default=20, metadata={"help": "async: max age in optimizer steps of the weights behind a "
                                                   "result (>= refresh_every)"})
    timeout: float = field(default=2.0, metadata={"help": "async: seconds to wait for a result"})
    refresh_every: int = field(default=10, metadata={"help": "async: optimizer steps between weight copies to the "
                                                             "miner (<= ttl)"})
    lookahead: int = field(default=8, metadata={"help": "async: micro-batches mined ahead"})
    per_job: int = field(default=4, metadata={"help": "async: micro-batches mined in one search (<= lookahead; half "
                                                      "the time a batch)"})
    worker: str = field(default="thread", metadata={"choices": tuple(Worker),
                                                    "help": "async: where mining runs (a thread, or a process with "
                                                            "no GIL shared with the trainer)"})
    # GPU mining: replay each job's kernels from a CUDA graph (vecrag.train.mining.graph). auto: for sync mining
    # and a miner process, not a miner thread (H200, transformer tower: sync 62 -> 81 % of no mining, process
    # 89-90 -> 90-92 %, but thread 92-93 -> 86-87 %; docs/benchmarks.md)
    cuda_graph: str = field(default="auto", metadata={"choices": ("auto", "on", "off"),
                                                      "help": "GPU mining: replay each job's kernels from a CUDA "
                                                              "graph; auto = for sync mining and a miner process, "
                                                              "not a miner thread"})
    fallback: str = field(default="sync", metadata={"choices": ("sync", "inbatch"),
                                                    "help": "async: when no fresh mined result is ready, mine the "
                                                            "batch in the step (sync) or train it on in-batch "
                                                            "negatives only (inbatch)"})
    stall: float = field(default=60.0, metadata={"help": "async: replace a miner whose job runs longer than this "
                                                         "(seconds)"})
    max_restarts: int = field(default=3, metadata={"help": "async: miner restarts before mining is disabled (every "
                                                           "batch then falls back)"})
    fault: str = field(default="", metadata={"help": "fault injection for tests: \"raise@N\", \"crash@N\", "
                                                     "\"hang@N:SECONDS\" (comma-separated)"})

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
        check(MiningMode(self.mode) is not MiningMode.ASYNC or self.ttl >= self.refresh_every, "mining.ttl", self.ttl,
              f"must be >= mining.refresh_every ({self.refresh_every}) in async mode, else most mined batches "
              "arrive stale; e.g. ttl = 2 x refresh_every")
        from vecrag.train.mining.async_miner import parse_faults

        parse_faults(self.fault)


@dataclass
class RetrieverTrainConfig(TrainConfig):
    """The shared TrainConfig with retriever defaults (early stopping on recall, chosen by bank size)."""

    epochs: int = field(default=10, metadata={"help": "passes over the training samples"})
    lr: float = field(default=3e-4, metadata={"help": "peak learning rate (AdamW), reached after the warm-up"})
    lr_min: float = field(default=1e-6, metadata={"help": "cosine floor: the learning rate at the last step"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "warm-up as a fraction of all optimizer steps (or "
                                                                "see warmup_steps; the larger wins)"})
    early_stop_metric: str = field(default="auto", metadata={"help": "validation metric that picks best.pt and "
                                                                     "drives early stopping; auto = R@10 below 100k "
                                                                     "bank vectors, R@500 above"})
    patience: int = field(default=3, metadata={"help": "epochs without improvement before stopping (0 = never "
                                                       "stop early)"})


@dataclass
class RetrieverConfig:
    bank: str = field(default="", metadata={"help": "the bank trained on (set from BANK by vecrag train retriever)"})
    min_context: int = field(default=1, metadata={"help": "chunks of context a sample needs at least (earlier "
                                                          "positions of an article are not samples)"})
    val_backend: str = field(default="auto", metadata={"choices": ("torch", "faiss", "auto"),
                                                       "help": "validation search: exact torch, the bank's FAISS "
                                                               "index, or auto (the index when there is one)"})
    train: RetrieverTrainConfig = field(default_factory=RetrieverTrainConfig,
                                        metadata={"help": "the shared training loop"})
    model: TowerConfig = field(default_factory=TowerConfig, metadata={"help": "the query and doc towers"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "the contrastive loss"})
    mining: MiningConfig = field(default_factory=MiningConfig, metadata={"help": "hard-negative mining"})

    def validate(self) -> None:
        check(self.min_context >= 1, "min_context", self.min_context, "must be >= 1")
        check(self.model.kind != "transformer" or self.train.context <= self.model.max_len, "train.context",
              self.train.context, f"must be <= model.max_len ({self.model.max_len}, the transformer tower's learned "
              "positions); raise model.max_len or shorten the context")
        # while a graph is being captured torch marks the device's default CUDA generator as capturing, and a
        # random op of ANOTHER thread (the trainer's dropout) then raises; sync mining and a miner process capture
        # where nothing else draws from that generator
        m = self.mining
        miner_thread = MiningMode(m.mode) is MiningMode.ASYNC and Worker(m.worker) is Worker.THREAD
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
