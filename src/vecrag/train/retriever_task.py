"""The two-tower retriever as a Task of the shared training loop (docs/design.md, "The one training loop").

Samples are the bank's train split (contexts of up to ``train.context`` chunks inside one article, the
target is the next chunk). The query tower maps a context to a unit query; the doc tower maps bank vectors
(the positive = the target's stored vector, and every negative). Loss: :class:`InfoNCELoss` over in-batch
positives, an optional :class:`MemoryBankQueue` and mined hard negatives from the curriculum schedule.

Validation (every epoch and once before training) runs on the val split against the FULL bank with the
shared hit rules (context ids excluded, same text = hit): ``R@{10,50,100,500,1000}``, ``MRR@10``,
``median_rank``, plus the anchor heuristic's values as ``baseline_*``. The early-stopping metric
``auto`` resolves to ``R@10`` for banks under 100k vectors and ``R@500`` above (:func:`resolve_config`).
Because the trainer validates the untrained tower first (= the anchor, exactly) and keeps ``best.pt``
by that metric, the best checkpoint is never worse than the anchor on val.

Resume: the memory-bank queue, mining counters and the round's mining stats are in ``extra_state()``;
sync mining is a pure function of the weights, so a resumed sync run is bit-exact. Async results depend on
thread timing and are not reproducible by design.

Under torchrun (docs/distributed.md) each rank computes the rows of its own samples: the in-batch negatives
are ALL ranks' positives (:func:`vecrag.train.distributed.gather_with_grad`, gradient back to the owner
rank), masked against each local positive exactly as in one process (the masks are computed from the
gathered ids and vectors, in rank order, so a rank's own positive sits at global slot
``offset + i`` and is masked there by its id); the queue is fed the gathered ids (identical on every rank);
each rank mines its own samples. Mining stats and counters in the log are rank 0's share.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
from typing import Any

import numpy as np
import torch

from vecrag.bank.sequences import context_window, gather_context, make_samples
from vecrag.models.towers import RetrieverModel
from vecrag.runtime import to_device
from vecrag.scoring.heuristics import heuristic_query
from vecrag.train import distributed as dd
from vecrag.train.graphed import Staged
from vecrag.train.losses import ChunkMeta, InfoNCELoss, MemoryBankQueue, NegativeMasker
from vecrag.train.mining.curriculum import Curriculum, FilterConfig, MiningStats
from vecrag.train.mining.miners import MiningCore, make_searcher
from vecrag.train.mining.negatives import build_negatives
from vecrag.train.retriever_config import (  # noqa: F401  (re-exported: the config lives beside the task)
    BIG_BANK,
    LossConfig,
    MiningConfig,
    MiningMode,
    RetrieverConfig,
    RetrieverTrainConfig,
    resolve_config,
)

log = logging.getLogger(__name__)
VAL_KS = (10, 50, 100, 500, 1000)


def bank_tensor(vectors: np.ndarray, device: torch.device, max_frac: float = 0.5) -> torch.Tensor:
    """The bank (fp16/fp32 as stored) as a torch tensor for the training step's row gathers: copied once to
    a CUDA device when it takes at most ``max_frac`` of the free GPU memory (every step then gathers
    positives, queue and mined negatives without touching the host;
    fp16, 768 B a 384-D vector), else a zero-copy view of the memory map (on the CPU the training speed was
    the same as with numpy fancy indexing, within noise: docs/benchmarks.md)."""
    with warnings.catch_warnings():  # the memory map is read-only; nothing writes through this view
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.from_numpy(vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors))
    if device.type != "cuda":
        return t
    free, _ = torch.cuda.mem_get_info(device)
    if t.nbytes > max_frac * free:  # a bank too large for the GPU stays on the host: slower, never an OOM
        log.warning("bank (%.1f GB) is over %.0f %% of free GPU memory (%.1f GB): training gathers its rows on "
                    "the host", t.nbytes / 1e9, 100 * max_frac, free / 1e9)
        return t
    return t.to(device)


class RetrieverTask:
    name = "retriever"

    def __init__(self, bank, cfg: RetrieverConfig):
        self.bank, self.cfg = bank, cfg
        self.L = cfg.train.context
        self.train = make_samples(bank, "train", min_context=cfg.min_context)
        self.val = make_samples(bank, "val", min_context=cfg.min_context,
                                max_samples=cfg.train.val_max_queries or None, seed=cfg.train.seed)
        self.n_train = len(self.train)
        # the tower is built on the host: fork the CPU generator only (by default fork_rng also saves and restores
        # every GPU's, initialising CUDA in a CPU run and warning on a multi-GPU machine)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            self.model = RetrieverModel(bank.dim, cfg.model)
        self.meta = ChunkMeta.from_bank(bank)
        self.masker = NegativeMasker(self.meta, window=cfg.loss.window, dup_eps=cfg.loss.dup_eps)
        self.loss_fn = InfoNCELoss(cfg.loss.tau, cfg.loss.margin)
        self.queue = MemoryBankQueue(cfg.loss.queue)
        self.curriculum = Curriculum.parse(cfg.mining.schedule, base=cfg.mining.schedule_base)
        self.filters = FilterConfig(rel=cfg.mining.rel, dup=cfg.mining.dup, keep_back=cfg.mining.keep_back)
        self.round = MiningStats()
        self.counters = {"mined_sync": 0, "mined_async": 0, "fallback_inbatch": 0, "mined_sync_graph": 0}
        self.trainer = None
        self.device = torch.device("cpu")
        self.reuse_query = True  # sync mining on a CPU mines with the training step's queries (_reuse_query)
        self.negatives = build_negatives(self)  # mining.mode: none / sync / async
        self.bank_t = bank_tensor(bank.vectors, torch.device("cpu"))  # moved to the training device by attach()
        self._val_cache: dict | None = None
        self._bank_f32: torch.Tensor | None = None
        self._search_lock = threading.Lock()
        self._val_index = None
        # the step's id tables (moved to the training device by attach): target and article start of each
        # training sample
        self._targets = torch.from_numpy(self.train.target)
        self._starts = torch.from_numpy(self.train.start)
        self._step_core: MiningCore | None = None       # the miner of graphed steps (built on first use)
        self._mine_sums: torch.Tensor | None = None      # its statistics, summed on the device
        self._mine_counted = [0, 0]                      # samples and candidates they cover (counted on the host)
        self._reuse_idx: np.ndarray | None = None

    # ---- Task protocol ---------------------------------------------------------------------------------
    def attach(self, trainer) -> None:
        self.trainer = trainer
        self.device = trainer.device
        self.bank_t = bank_tensor(self.bank.vectors, self.device)
        self._targets, self._starts = self._targets.to(self.device), self._starts.to(self.device)
        self.negatives.start(trainer.step)  # an async miner opens its index (or process) while the first epochs run

    def _core(self, searcher=None, thread: bool = False, cuda_graph: bool | None = None) -> MiningCore:
        """A mining core of this process: the sync miner's, or (``thread``) an async miner thread's."""
        m = self.cfg.mining
        # torch exact search runs where the tower runs (the bank on the GPU when training there); faiss on CPU
        where = str(self.device) if self.device.type == "cuda" else "cpu"
        return MiningCore(self.bank.vectors, self.train, self.L, self.masker, self.filters, m.k,
                          searcher or make_searcher(self.bank, m.backend, where, self._search_bank), self.device,
                          cuda_graph=m.graphs_for(thread) if cuda_graph is None else cuda_graph)

    def _search_bank(self) -> torch.Tensor:
        """The bank as exact torch searchers hold it, ONE copy shared by validation and every miner of this
        process: the resident fp16 rows on a GPU (``bank_t``), a float32 copy made once on the CPU (each
        searcher used to make its own: two fp32 copies of a 10M bank are 31 GB)."""
        if self.bank_t.device.type == "cuda":
            return self.bank_t
        with self._search_lock:  # the async miner thread may ask at the same time as validation
            if self._bank_f32 is None:
                self._bank_f32 = torch.from_numpy(np.array(self.bank.vectors, dtype=np.float32))
        return self._bank_f32

    def _mined(self, idx: np.ndarray, step: int, queries: torch.Tensor | None = None) -> np.ndarray | None:
        """Mined negatives [len(idx), n_neg] for the batch (row j for sample idx[j]; -1 padded), or None.
        ``queries``: the batch's query vectors for the sync miner (see :meth:`_reuse_query`)."""
        epoch = self.trainer.epoch if self.trainer is not None else 0
        phase = self.curriculum.phase_for(epoch)
        if phase is None:
            return None
        return self.negatives.get(idx, step, epoch, phase, queries)

    def _reuse_query(self) -> bool:
        """Sync mining on a CPU reads the training step's own query vectors instead of running the tower again
        (half of a CPU mining step outside the search: benchmarks/mining_step.py --profile). Only where they are
        the miner's: no dropout, no autocast (the miner scores in float32). The GRU / LSTM / mean-MLP towers give
        bit-identical queries either way (a test); the transformer's training path differs from its eval fast
        path by ~1e-7."""
        return (self.reuse_query and self.negatives.mode is MiningMode.SYNC and self.device.type == "cpu"
                and self.cfg.model.dropout == 0 and not torch.is_autocast_enabled("cpu"))

    def stage(self, idx: np.ndarray, step: int, *, graphed: bool = False) -> Staged:
        """A micro-batch for :meth:`compute`: its sample ids, the queue's ids (the whole ring, -1 where empty: one
        shape for the whole run), every rank's positive ids under torchrun, and the mined negatives when they come
        from the host (an async miner, or the sync miner of an eager step). A graphed step with sync mining mines
        inside the step instead (``key`` says so): the same search and filters, captured with the rest."""
        idx = np.asarray(idx, np.int64)
        pos_ids = self.train.target[idx]
        arrays = {"idx": idx}
        if self.queue.size > 0:
            arrays["queue"] = self.queue.ids.copy()
        all_ids, sizes = dd.gather_ids(pos_ids)        # every rank's positives, in rank order (plain run: own)
        if len(sizes) > 1:
            arrays["all_ids"] = all_ids
        epoch = self.trainer.epoch if self.trainer is not None else 0
        phase = self.curriculum.phase_for(epoch)
        key: tuple = (tuple(sizes),)
        if graphed and phase is not None and self.negatives.mode is MiningMode.SYNC:
            key += ("mine", phase.n_neg, phase.lo, phase.hi)
            self.counters["mined_sync"] += 1
            self.counters["mined_sync_graph"] += 1
            if self._step_core is None:  # built here, outside any capture
                self._step_core = self._core(cuda_graph=False)  # inside the training graph: no graph of its own
            # a replay runs no Python: the host counts the samples mined, the device sums the miner's statistics
            self._mine_counted[0] += len(idx)
            self._mine_counted[1] += len(idx) * self._step_core.n_candidates
        elif not graphed and self._reuse_query():
            key += ("reuse", step)
            self._reuse_idx = idx
        else:
            mined = self._mined(idx, step)  # before the forward: sync mining toggles eval mode
            if mined is None and graphed and phase is not None and self.negatives.mode is MiningMode.ASYNC:
                # an async batch not ready in time: all padding (masked, the same loss as no mined set) keeps
                # the phase's one graph instead of capturing a second for the batches that missed
                mined = np.full((len(idx), phase.n_neg), -1, np.int64)
            if mined is not None:
                arrays["mined"] = mined
        return Staged(key, arrays, after=lambda: self.queue.push(all_ids))

    def compute(self, t: dict[str, torch.Tensor], key: tuple) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of a staged micro-batch. Everything runs on the training device with no host sync (the graphed
        step captures it) except the CPU path that mines with the step's own queries (``reuse``)."""
        dev = self.device
        idx = t["idx"]
        pos_ids, start = self._targets[idx], self._starts[idx]
        ctx_ids = context_window(pos_ids, start, self.L)
        mined = t.get("mined")
        if len(key) > 1 and key[1] == "mine":
            mined = self._mine_in_step(ctx_ids, pos_ids, start, key)
        qids = t.get("queue")
        parts = [ctx_ids, pos_ids] + ([qids] if qids is not None else []) + ([mined] if mined is not None else [])
        rows = self._gather(parts)
        ctx, pos_rows = rows[0], rows[1]
        mask = ctx_ids >= 0
        q = self.model.query(ctx * mask[..., None], mask)
        if len(key) > 1 and key[1] == "reuse":  # CPU sync mining with this step's queries (see _reuse_query)
            got = self._mined(self._reuse_idx, key[2], queries=q.detach())
            if got is not None:
                mined = torch.from_numpy(got).to(dev)
                rows.append(self._gather([mined])[0])
        pos = self.model.doc(pos_rows)
        all_ids = t.get("all_ids", pos_ids)
        sizes = list(key[0])
        neg_sets, stats_masked = [], {}
        if self.cfg.loss.inbatch:
            all_pos = dd.gather_with_grad(pos, sizes)
            m, c = self.masker.mask(pos_ids, all_ids, pos, all_pos)
            neg_sets.append((all_pos, m))
            stats_masked["inbatch"] = c
        if qids is not None:
            qv = self.model.doc(rows[2]).detach()
            m, c = self.masker.mask(pos_ids, qids, pos, qv)
            neg_sets.append((qv, m))
            stats_masked["queue"] = c
        if mined is not None:
            # the miners removed all the masker would (the same rules on the same bank: tests/train/test_miners.py),
            # so only the -1 padding of samples short of negatives is masked here
            neg_sets.append((self.model.doc(rows[-1]), mined < 0))
        loss, stats = self.loss_fn(q, pos, neg_sets)
        for name, c in stats_masked.items():
            stats[f"masked_{name}"] = sum(c.values())  # device tensors: read when logged
        return loss, stats

    def loss(self, idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        st = self.stage(idx, step)
        out = self.compute({k: to_device(a, self.device) for k, a in st.arrays.items()}, st.key)
        st.finish()
        return out

    def _gather(self, id_arrays: list[torch.Tensor]) -> list[torch.Tensor]:
        """float32 bank rows [*ids.shape, D] for each id tensor (-1 reads row 0, masked by the caller): ONE gather
        for all of them, from the bank where it lives (the GPU when it fits there)."""
        flat = torch.cat([a.reshape(-1) for a in id_arrays]).clamp(min=0)
        rows = self.bank_t.index_select(0, flat.to(self.bank_t.device)).to(self.device).float()
        out, s = [], 0
        for a in id_arrays:
            out.append(rows[s:s + a.numel()].view(*a.shape, self.bank.dim))
            s += a.numel()
        return out

    def _mine_in_step(self, ctx_ids: torch.Tensor, pos_ids: torch.Tensor, start: torch.Tensor,
                      key: tuple) -> torch.Tensor:
        """Sync mining inside the (graphed) step: the miner's device work on this batch, its negatives [B, n_neg]
        (-1 padded) left on the device and its statistics summed into :attr:`_mine_sums` (read each epoch)."""
        from vecrag.train.mining.curriculum import Phase

        assert self._step_core is not None, "stage() builds the step's miner"
        n_neg = key[2]
        phase = Phase(0, 0, n_neg, key[3], key[4])
        no_amp = torch.autocast(self.device.type, enabled=False)
        with torch.no_grad(), no_amp:
            packed = self._step_core._select(self.model.query, ctx_ids, pos_ids, start, phase=phase)
        B = pos_ids.shape[0]
        tail = packed[B * n_neg:]
        if self._mine_sums is None or self._mine_sums.shape != tail.shape:
            self._mine_sums = torch.zeros_like(tail)
        self._mine_sums += tail
        return packed[:B * n_neg].long().view(B, n_neg)

    def graph_state(self) -> list[torch.Tensor]:
        """Device tensors a graphed step adds to (the step graphs put them back after a capture's warm-up)."""
        return [self._mine_sums] if self._mine_sums is not None else []

    @torch.no_grad()
    def _encode_val(self, queries: bool = True) -> tuple[np.ndarray, dict]:
        if self._val_cache is None:
            ctx_ids = self.val.context_ids(self.L)
            ctx, mask = gather_context(self.bank.vectors, ctx_ids)
            base = heuristic_query(ctx, mask, self.cfg.model.anchor, self.cfg.model.alpha)
            self._val_cache = {"ctx_ids": ctx_ids, "ctx": ctx, "mask": mask, "baseline": None, "base_q": base}
        vc = self._val_cache
        self.model.eval()
        out = []
        for s in range(0, len(vc["ctx"]), 512):
            out.append(self.model.query(torch.from_numpy(vc["ctx"][s:s + 512]).to(self.device),
                                        torch.from_numpy(vc["mask"][s:s + 512]).to(self.device)).float().cpu())
        q = torch.cat(out).numpy() if out else np.zeros((0, self.bank.dim), np.float32)
        return q, vc

    def _rank(self, index, q: np.ndarray, vc: dict) -> dict[str, float]:
        """Recall of ``q`` on the val split by the same evaluator `vecrag eval retriever` scores with."""
        from vecrag.scoring.evaluators import RetrievalEvaluator

        table = RetrievalEvaluator(self.bank, self.val, self.L, index, ks=VAL_KS)(q)
        return {k2: float(v) for k2, v in table.items() if not k2.endswith("_ci")}

    def validate(self, epoch: int) -> dict[str, float]:
        from vecrag.index.load import open_index
        from vecrag.index.search import ExactTorchIndex

        self._flush_mining(epoch)
        if len(self.val) == 0:
            from vecrag.errors import VecragError

            raise VecragError("the bank's val split has no samples", path=self.bank.path,
                              hint="re-split the bank (`vecrag bank split`) or lower min_context")
        q, vc = self._encode_val()
        if self._val_index is None:
            self._val_index = open_index(self.bank, backend=self.cfg.val_backend, device=str(self.device),
                                         vectors=self._search_bank)  # called only for exact search
        raw = self._val_index
        if self.model.doc.is_identity:
            index = raw
        else:  # the doc side changed: re-encode the whole bank and search it exactly
            enc = self.model.doc.encode_bank(self.bank.vectors, device=self.device).cpu().numpy()
            index = ExactTorchIndex(enc, device=str(self.device))
        out = self._rank(index, q, vc)
        if vc["baseline"] is None:
            vc["baseline"] = self._rank(raw, vc["base_q"], vc)
        out.update({f"baseline_{k}": v for k, v in vc["baseline"].items() if k != "n_queries"})
        return out

    def _flush_mining(self, epoch: int) -> None:
        st = MiningStats()
        st.merge(self.round)
        if self._mine_counted[0] and self._mine_sums is not None:  # mined inside graphed steps: one read an epoch
            from vecrag.train.mining.curriculum import stats_from_counts

            st.merge(stats_from_counts(self._mine_sums.cpu().numpy(), *self._mine_counted))
            self._mine_sums.zero_()
            self._mine_counted = [0, 0]
        st.merge(self.negatives.take_round())
        self.round = MiningStats()
        if st.n_samples == 0:
            return
        log.info("mining round (epoch %d):\n%s", epoch, st.table())
        if self.trainer is not None:
            self.trainer.log_record("mining", epoch=epoch, step=self.trainer.step, **st.summary(), **self.stats())

    def extra_state(self) -> dict:
        return {"queue": self.queue.state_dict(), "counters": dict(self.counters),
                "round": dataclasses.asdict(self.round)}

    def load_extra_state(self, d: dict) -> None:
        if "queue" in d:
            self.queue.load_state_dict(d["queue"])
        self.counters.update({k: int(v) for k, v in d.get("counters", {}).items()})
        if "round" in d:
            self.round = MiningStats(**d["round"])
        if self.trainer is not None:  # resumed: the weights (and step) just changed
            self.negatives.rebase(self.trainer.step)

    def stats(self) -> dict[str, float]:
        out = {f"mining_{k}": float(v) for k, v in self.counters.items()}
        out["queue_len"] = float(len(self.queue))
        out.update(self.negatives.stats())
        return out

    def close(self) -> None:
        self.negatives.close()
