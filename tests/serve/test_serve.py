"""The HTTP API against real banks (synthetic vectors, and a small bank encoded with the real encoder)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_synthetic_bank
from vecrag.bank.store import Bank, write_bank
from vecrag.fsutil import append_jsonl
from vecrag.serve.app import create_app
from vecrag.serve.state import load_state

LANES = ["legal", "creative", "science"]
SECRET = "TOP-SECRET-OUTSIDE-THE-ROOT"
TOPICS = [
    ("river", ["The river flows through the green valley.", "Farmers grow wheat along the river banks.",
               "The harvest is stored in wooden barns.", "Boats carry grain down to the market town."]),
    ("mountain", ["Winter brings deep snow to the mountains.", "Skiers visit the high slopes every year.",
                  "The mountain lodge serves hot soup at night.", "Avalanche warnings close the upper trails."]),
    ("ocean", ["Ships sail across the wide ocean.", "Sailors navigate by the stars at night.",
               "The harbour is busy at dawn.", "Storms at sea delay the cargo fleet."]),
    ("court", ["The court heard the contract dispute.", "The judge ruled that the clause was void.",
               "Both parties filed an appeal within a month.", "The higher court upheld the ruling."]),
]


def make_text_bank(path: Path, n_articles: int = 16, per_article: int = 6) -> Bank:
    """A small bank encoded with the default encoder (real text in, real vectors)."""
    from vecrag.bank.encode import load_encoder

    enc = load_encoder(None, device="cpu")
    texts, arts, pos = [], [], []
    for a in range(n_articles):
        name, sents = TOPICS[a % len(TOPICS)]
        for p in range(per_article):
            texts.append(f"{sents[p % len(sents)]} ({name} story {a}, part {p})")
            arts.append(a)
            pos.append(p)
    lanes = [LANES[a % len(LANES)] for a in arts]
    return write_bank(path, enc.encode(texts), article_ids=np.asarray(arts), positions=np.asarray(pos),
                      texts=texts, titles={a: f"Story {a}" for a in range(n_articles)}, chunk_lanes=lanes,
                      encoder=enc.info)


def write_run(run: Path, epochs: int = 3, steps_per_epoch: int = 5) -> None:
    """A run directory in the log.jsonl format of the training loop (used where no training is needed)."""
    run.mkdir(parents=True, exist_ok=True)
    log = run / "log.jsonl"
    append_jsonl(log, {"kind": "event", "event": "start", "time": 0.0})
    step = 0
    for e in range(epochs + 1):
        append_jsonl(log, {"kind": "val", "epoch": e, "step": step, "R@10": 0.2 + 0.05 * e, "R@100": 0.5 + 0.05 * e,
                           "MRR@10": 0.1, "baseline_R@10": 0.2, "baseline_R@100": 0.5, "improved": True})
        if e == epochs:
            break
        for _ in range(steps_per_epoch):
            step += 1
            append_jsonl(log, {"kind": "train", "step": step, "epoch": e, "loss": 2.0 / step, "lr": 1e-3,
                               "samples_per_s": 100.0 + step, "rss_mb": 400.0, "cuda_mem_mb": 0.0, "pos_cos": 0.5})
    (run / "metrics").mkdir(exist_ok=True)
    (run / "metrics" / "eval.json").write_text(json.dumps({"R@10": 0.3}))
    tele = run / "decode.jsonl"
    for i, (dec, lane, c) in enumerate([("SNAP", "legal", 0.95), ("BLEND", "legal", 0.9), ("NOVEL", "", 0.5),
                                        ("SNAP", "creative", 0.97)]):
        append_jsonl(tele, {"kind": "step", "step": i, "decision": dec, "lane": lane, "c": c})


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("runs")
    root = base / "runs"
    write_run(root / "good")
    write_run(root / "group" / "nested", epochs=1)
    outside = base / "secret"
    outside.mkdir()
    (outside / "log.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 1.0, "note": SECRET}) + "\n")
    (outside / "passwd.json").write_text(json.dumps({"secret": SECRET}))
    os.symlink(outside, root / "evil")                                           # a run symlinked out of the root
    os.symlink(outside / "passwd.json", root / "good" / "metrics" / "leak.json")  # a file symlinked out
    return root


@pytest.fixture(scope="module")
def vec_app(tmp_path_factory: pytest.TempPathFactory, runs_root: Path):
    bank = make_synthetic_bank(tmp_path_factory.mktemp("vb") / "bank", lanes=LANES)
    app = create_app(bank.path, runs_root=runs_root, max_body_bytes=64 * 1024, load_text_encoder=False,
                     device="cpu", timeout_ms=None)
    with TestClient(app) as client:
        yield bank, client


class BankTextEncoder:
    """Stands in for a synthetic bank's encoder: a chunk's text -> that chunk's vector (so a prompt made of bank text
    starts exactly on the bank, where an echo would be the best match); other text -> a fixed random unit vector."""

    def __init__(self, bank: Bank):
        self.bank = bank
        self.ids = {t: i for i, t in enumerate(bank.texts)}

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.bank.dim), np.float32)
        for j, t in enumerate(texts):
            if t in self.ids:
                out[j] = self.bank.vectors_f32([self.ids[t]])[0]
            else:
                v = np.random.default_rng(sum(t.encode())).standard_normal(self.bank.dim)
                out[j] = v / np.linalg.norm(v)
        return out


def synthetic_text_app(bank: Bank) -> FastAPI:
    """The server over a synthetic bank, with :class:`BankTextEncoder` as its text encoder (text in: /generate)."""
    st = load_state(bank.path, load_text_encoder=False, device="cpu", timeout_ms=None)
    st.encoder, st.encoder_error = BankTextEncoder(bank), None
    return create_app(bank.path, state=st)


@pytest.fixture(scope="module")
def gen_app(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic bank without a calibration: the default profile is greedy."""
    bank = make_synthetic_bank(tmp_path_factory.mktemp("gb") / "bank", lanes=LANES)
    with TestClient(synthetic_text_app(bank)) as client:
        yield bank, client


@pytest.fixture(scope="module")
def cal_app(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic bank calibrated by `vecrag calibrate` for the server's default models: the default is neutral."""
    from vecrag.cli import main

    bank = make_synthetic_bank(tmp_path_factory.mktemp("cb") / "bank", lanes=LANES)
    assert main(["calibrate", str(bank.path), "--lvm", "heuristic:ewma", "--retriever", "heuristic:last",
                 "--quiet"]) == 0
    with TestClient(synthetic_text_app(bank)) as client:
        yield bank, client


def readable(steps: list[dict]) -> str:
    """The continuation as `vecrag generate` prints it: SNAP text as is, BLEND/NOVEL text marked [~ ...]."""
    return " ".join("[no text: retrieval failed]" if s["text"] is None else
                    f"[~ {s['text']}]" if s["approx"] else s["text"] for s in steps)


def assert_no_repeats(out: dict) -> None:
    """No chunk shown twice, none the prompt's own text, and the continuation is the steps' texts in order."""
    ids = [s["text_id"] for s in out["steps"]]
    assert all(i >= 0 for i in ids) and len(set(ids)) == len(ids), ids
    assert not {s["text"] for s in out["steps"]} & set(out["prompt_chunks"]), out["prompt_chunks"]
    assert out["continuation"] == readable(out["steps"])


@pytest.fixture(scope="module")
def text_client(tmp_path_factory: pytest.TempPathFactory):
    bank = make_text_bank(tmp_path_factory.mktemp("tb") / "bank")
    with TestClient(create_app(bank.path, device="cpu", timeout_ms=None)) as client:
        yield bank, client


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# ---- /healthz, /search --------------------------------------------------------------------------------
def test_healthz(vec_app):
    bank, c = vec_app
    h = c.get("/healthz").json()
    assert h["status"] == "ok"
    assert h["bank"]["n_chunks"] == bank.n and h["bank"]["dim"] == bank.dim
    assert h["encoder"]["available"] is False and "disabled" in h["encoder"]["error"]
    assert h["decoder"]["available"] is True and h["decoder"]["lanes"] == sorted(LANES)
    d = h["decoder"]  # no calibration for the default models: greedy, and the command that makes one
    assert d["calibrated"] is False and d["default_profile"] == "greedy" and d["calibration"] is None
    assert d["available_profiles"] == ["greedy", "gtr-t5"] and "neutral" in d["profiles"]
    assert d["calibrate_command"] == (f"vecrag calibrate {bank.path} --lvm heuristic:ewma "
                                      "--retriever heuristic:last")


def test_search_vectors_finds_each_chunk_first(vec_app):
    bank, c = vec_app
    ids = [0, 17, bank.n - 1]
    r = c.post("/search", json={"vectors": bank.vectors_f32(ids).tolist(), "k": 4})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [row[0]["id"] for row in res] == ids
    for i, row in zip(ids, res, strict=True):
        assert len(row) == 4
        assert row[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert row[0]["text"] == bank.texts[i]
        assert row[0]["title"] == f"Article {bank.article_of[i]}"
        assert row[0]["lane"] == LANES[bank.article_of[i] % 3]
        assert [h["score"] for h in row] == sorted((h["score"] for h in row), reverse=True)


def test_search_unnormalised_vector_and_k_above_bank_size(vec_app):
    bank, c = vec_app
    v = (bank.vectors_f32([5])[0] * 7.5).tolist()
    res = c.post("/search", json={"vectors": [v], "k": 1000}).json()["results"][0]
    assert res[0]["id"] == 5 and res[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert len(res) == bank.n  # fewer vectors than k: -1 padding is dropped


def test_text_search_refused_without_encoder(vec_app):
    _, c = vec_app
    r = c.post("/search", json={"texts": ["hello"]})
    assert r.status_code == 422 and "cannot encode text" in r.json()["detail"]


@pytest.mark.parametrize("body, where", [
    ({"vectors": [[0.1] * 32], "k": 0}, "k"),
    ({"vectors": [[0.1] * 32], "k": 1001}, "k"),
    ({"vectors": [[0.1] * 31]}, "vectors"),
    ({"vectors": [[0.0] * 32]}, "vectors"),
    ({"vectors": [[0.1] * 32] * 65}, "vectors"),
    ({"vectors": []}, "vectors"),
    ({"texts": ["a"], "vectors": [[0.1] * 32]}, "exactly one"),
    ({"k": 3}, "exactly one"),
    ({"texts": ["x" * 4001]}, "texts"),
    ({"texts": [""]}, "texts"),
    ({"vectors": [[0.1] * 32], "extra": 1}, "extra"),
    ({"vectors": [["a"] * 32]}, "vectors"),
])
def test_search_validation(vec_app, body, where):
    _, c = vec_app
    r = c.post("/search", json=body)
    assert r.status_code == 422, r.text
    assert where in json.dumps(r.json()["detail"])


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_values_are_422_not_500(vec_app, token):
    _, c = vec_app
    raw = '{"vectors": [[' + ", ".join(["0.1"] * 31 + [token]) + "]]}"
    r = c.post("/search", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["type"] == "finite_number"


def test_malformed_json_is_422(vec_app):
    _, c = vec_app
    r = c.post("/search", content=b'{"vectors": [[0.1,', headers={"content-type": "application/json"})
    assert r.status_code == 422


# ---- body cap ------------------------------------------------------------------------------------------
def test_oversized_body_declared_is_413(vec_app):
    _, c = vec_app
    body = json.dumps({"vectors": [[0.123456789] * 128] * 64}).encode()  # ~ 106 kB > 64 kB cap
    assert len(body) > 64 * 1024
    r = c.post("/search", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]


def test_oversized_body_streamed_without_length_is_413(vec_app):
    _, c = vec_app

    def chunks():
        yield b'{"texts": ["'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"]}'

    r = c.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_body_just_under_cap_is_accepted(vec_app):
    bank, c = vec_app
    r = c.post("/search", json={"vectors": bank.vectors_f32([1, 2, 3]).tolist(), "k": 2})
    assert r.status_code == 200


# ---- /next -------------------------------------------------------------------------------------------
def test_next_from_ids_follows_the_policy(vec_app):
    bank, c = vec_app
    r = c.post("/next", json={"context_ids": [12, 13, 14], "k": 7, "profile": "gtr-t5"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["decision"] in ("SNAP", "BLEND", "NOVEL")
    assert 1 <= len(out["candidates"]) <= 7
    assert out["lane"] == LANES[bank.article_of[14] % 3]
    pol = out["details"]["policy"]
    cval = out["c"]
    expect = "SNAP" if cval >= pol["tau_snap"] else ("NOVEL" if cval <= pol["tau_novel"] else "BLEND")
    assert out["decision"] == expect
    if out["decision"] != "NOVEL":
        assert out["chosen"]["id"] in [h["id"] for h in out["candidates"]]


def test_next_never_snaps_back_onto_its_own_context(vec_app):
    """With context [x] the heuristic LVM predicts x itself (cos 1 to x); the context's own chunks are dropped
    from the shortlist (as `vecrag generate` and `eval decode` do), so x is neither a candidate nor chosen and
    the decision is taken against the next-best chunk; k candidates still come back."""
    _, c = vec_app
    out = c.post("/next", json={"context_ids": [40], "k": 3, "profile": "gtr-t5"}).json()
    ids = [h["id"] for h in out["candidates"]]
    assert 40 not in ids and len(ids) == 3
    assert out["c"] < 0.999 and (out["chosen"] is None or out["chosen"]["id"] != 40)
    assert out["details"]["c_max"] < 0.999 and out["details"]["skipped_ids"] == []  # x itself never competes


def test_next_never_back_skips_the_context_articles_earlier_chunks(vec_app):
    """never_back: no candidate is a chunk of the context's article at or before its furthest context chunk."""
    bank, c = vec_app
    art = bank.article_of
    first = int(np.flatnonzero(art == art[14])[0])
    ctx = [first + 2, first + 3]
    for nb in (False, True):
        out = c.post("/next", json={"context_ids": ctx, "k": 20, "never_back": nb}).json()
        ids = [h["id"] for h in out["candidates"]]
        back = [i for i in ids if art[i] == art[ctx[0]] and i <= ctx[-1]]
        assert len(ids) == 20 and out["details"]["never_back"] is nb
        assert back == ([] if nb else [first + 1, first])  # without it the article's first chunks come back
        assert all(i not in ctx for i in ids)


@pytest.mark.parametrize("body, msg", [
    ({"context_ids": [-1]}, "greater than or equal"),
    ({"context_ids": [10**9]}, "bank size"),
    ({"context_ids": []}, "at least 1"),
    ({"context_ids": [1], "k": 1001}, "less than or equal"),
    ({"context_ids": [1], "profile": "nope"}, "unknown decode profile"),
    ({"context_ids": [1], "profile": "neutral"}, "vecrag calibrate "),
    ({"context_ids": [1], "profile": "conservative"}, "vecrag calibrate "),
    ({"context_ids": [1], "profile": "../x"}, "pattern"),
    ({"context_ids": [1], "lane": "nope"}, "unknown lane"),
    ({"context_ids": [1], "context_texts": ["a"]}, "exactly one"),
])
def test_next_validation(vec_app, body, msg):
    _, c = vec_app
    r = c.post("/next", json=body)
    assert r.status_code == 422, r.text
    assert msg in json.dumps(r.json()["detail"])


def test_generate_needs_an_encoder(vec_app):
    _, c = vec_app
    r = c.post("/generate", json={"prompt": "hello there", "steps": 2})
    assert r.status_code == 422 and "cannot encode" in r.json()["detail"]


# ---- /metrics ------------------------------------------------------------------------------------------
def test_metrics_counts_requests_decisions_and_rejections(vec_app):
    bank, c = vec_app
    before = metric_samples(c.get("/metrics").text)
    key = ("vecrag_requests_total", (("endpoint", "/search"), ("method", "POST"), ("status", "200")))
    for i in range(3):
        assert c.post("/search", json={"vectors": bank.vectors_f32([i]).tolist()}).status_code == 200
    c.post("/search", json={"vectors": [[0.1] * 3]})
    c.post("/search", content=b"x" * 70_000, headers={"content-type": "application/json"})
    out = c.post("/next", json={"context_ids": [3, 4]}).json()
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = metric_samples(r.text)
    assert after[key] - before.get(key, 0) == 3
    bad = ("vecrag_requests_total", (("endpoint", "/search"), ("method", "POST"), ("status", "422")))
    assert after[bad] - before.get(bad, 0) == 1
    big = ("vecrag_rejected_total", (("reason", "body_too_large"),))
    assert after[big] - before.get(big, 0) == 1
    hist = ("vecrag_request_latency_seconds_count", (("endpoint", "/search"),))
    assert after[hist] - before.get(hist, 0) >= 5
    dkey = ("vecrag_decisions_total", (("decision", out["decision"]), ("lane", out["lane"])))
    assert after[dkey] - before.get(dkey, 0) == 1
    assert after[("vecrag_bank_vectors", ())] == bank.n


def test_busy_compute_queue_answers_503(vec_app, tmp_path):
    """A full compute queue is refused with 503 + Retry-After, and the queued request still completes."""
    bank, _ = vec_app
    app = create_app(bank.path, load_text_encoder=False, device="cpu", max_pending=1, timeout_ms=None)
    st = app.state.vecrag
    gate = threading.Event()
    st.compute.executor.submit(gate.wait, 30)  # occupy the compute thread
    body = {"vectors": bank.vectors_f32([0]).tolist()}

    async def scenario() -> tuple[int, int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as ac:
            first = asyncio.create_task(ac.post("/search", json=body))
            for _ in range(200):
                if st.compute.pending == 1:
                    break
                await asyncio.sleep(0.01)
            second = await ac.post("/search", json=body)
            assert second.headers.get("retry-after") == "1"
            gate.set()
            return (await first).status_code, second.status_code

    try:
        assert asyncio.run(scenario()) == (200, 503)
    finally:
        gate.set()
        st.close()


def test_concurrent_searches_are_batched_and_each_gets_its_own_answer(vec_app):
    bank, _ = vec_app
    app = create_app(bank.path, load_text_encoder=False, device="cpu", timeout_ms=None)
    st = app.state.vecrag
    gate = threading.Event()
    st.compute.executor.submit(gate.wait, 30)  # hold the compute thread so requests pile up
    ids = list(range(0, 100, 10))

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as ac:
            tasks = [asyncio.create_task(ac.post("/search", json={"vectors": bank.vectors_f32([i]).tolist(),
                                                                  "k": 1 + j % 4}))
                     for j, i in enumerate(ids)]
            for _ in range(300):
                if st.batcher.in_flight + len(st.batcher._waiting) == len(ids):
                    break
                await asyncio.sleep(0.01)
            gate.set()
            return list(await asyncio.gather(*tasks))

    try:
        responses = asyncio.run(scenario())
    finally:
        gate.set()
        st.close()
    for j, (i, r) in enumerate(zip(ids, responses, strict=True)):
        assert r.status_code == 200
        row = r.json()["results"][0]
        assert len(row) == 1 + j % 4 and row[0]["id"] == i
    assert st.batcher.queries == len(ids) and st.batcher.batches <= 2  # at most: the first alone, then the rest


# ---- dashboard API and traversal --------------------------------------------------------------------------
def test_runs_listing_excludes_symlinks_out_of_root(vec_app):
    _, c = vec_app
    names = [r["name"] for r in c.get("/api/runs").json()["runs"]]
    assert names == ["good", "group/nested"]
    good = next(r for r in c.get("/api/runs").json()["runs"] if r["name"] == "good")
    assert good["metrics"] == ["eval.json"]  # the symlinked leak.json is not listed


def test_run_log_views(vec_app):
    _, c = vec_app
    out = c.get("/api/runs/good/log").json()
    v = out["views"]
    assert len(v["loss"]["loss"]) == 15 and v["loss"]["loss"][0] == [1, 2.0]
    assert set(v["recall"]) == {"R@10", "R@100"} and len(v["recall"]["R@10"]) == 4
    assert set(v["recall_baselines"]) == {"baseline_R@10", "baseline_R@100"}
    assert "MRR@10" in v["val_other"] and "pos_cos" in v["task"] and v["miner"] == {}
    assert c.get("/api/runs/group/nested/log").json()["views"]["counts"]["val"] == 2
    thin = c.get("/api/runs/good/log", params={"max_points": 4}).json()
    assert thin["views"]["counts"]["train"] == 4


def test_run_decode_views(vec_app):
    _, c = vec_app
    d = c.get("/api/runs/good/decode").json()
    assert d["sources"] == ["decode.jsonl"]
    assert d["by_lane"]["legal"] == {"SNAP": 50.0, "BLEND": 50.0, "NOVEL": 0.0}
    assert d["by_lane"]["(none)"]["NOVEL"] == 100.0
    assert d["c_hist"]["n"] == 4 and sum(d["c_hist"]["counts"]) == 4


def test_run_metrics_file(vec_app):
    _, c = vec_app
    assert c.get("/api/runs/good/metrics/eval.json").json() == {"R@10": 0.3}


@pytest.mark.parametrize("path", [
    "/api/runs/%2e%2e/log",
    "/api/runs/%2E%2E/decode",
    "/api/runs/..%2fsecret/log",
    "/api/runs/%2e%2e%2fsecret/log",
    "/api/runs/good/..%2F..%2Fsecret/log",
    "/api/runs/%2Fetc/log",
    "/api/runs/%2F%2Fetc%2Fpasswd/log",
    "/api/runs/evil/log",
    "/api/runs/evil/decode",
    "/api/runs/evil/metrics/passwd.json",
    "/api/runs/good/metrics/leak.json",
    "/api/runs/good/metrics/..%2F..%2F..%2Fsecret%2Fpasswd.json",
    "/api/runs/good/metrics/%2e%2e",
    "/api/runs/.hidden/log",
    "/api/runs/good/metrics/%2Fetc%2Fpasswd",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2e%2e/app.py",
])
def test_traversal_is_refused(vec_app, path):
    _, c = vec_app
    r = c.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text[:200])
    assert SECRET not in r.text


async def _raw_get(app, path: str) -> tuple[int, bytes]:
    """Call the ASGI app with a literal path (what uvicorn passes on for `GET /api/runs/../x`)."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict) -> None:
        sent.append(msg)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"t")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.parametrize("path", ["/api/runs/../secret/log", "/api/runs/good/../../secret/log",
                                  "/api/runs//etc/log", "/api/runs/good/metrics/../../../secret/passwd.json",
                                  "/static/../app.py", "/static/../../../../etc/passwd"])
def test_literal_dot_dot_paths_are_refused(vec_app, path):
    _, c = vec_app
    status, body = asyncio.run(_raw_get(c.app, path))
    assert status == 404, (path, status)
    assert SECRET.encode() not in body


def test_dashboard_page_and_docs(vec_app):
    _, c = vec_app
    page = c.get("/")
    assert page.status_code == 200 and "chart.umd.js" in page.text and 'id="val-panels"' in page.text
    assert '<select id="gen-profile">' in page.text and 'id="gen-passage"' in page.text  # the playground
    js = c.get("/static/chart.umd.js")
    assert js.status_code == 200 and "Chart.js v4" in js.text[:200]
    assert c.get("/docs").status_code == 200
    spec = c.get("/openapi.json").json()
    assert {"/search", "/next", "/generate", "/healthz", "/metrics"} <= set(spec["paths"])


# ---- text input with the real encoder ------------------------------------------------------------------
def test_text_search_finds_the_same_text(text_client):
    bank, c = text_client
    i = 27
    r = c.post("/search", json={"texts": [bank.texts[i], "snow on the mountain slopes"], "k": 5})
    assert r.status_code == 200, r.text
    exact, snow = r.json()["results"]
    assert exact[0]["id"] == i and exact[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert "mountain" in snow[0]["text"]


def test_next_from_texts(text_client):
    _, c = text_client
    r = c.post("/next", json={"context_texts": ["The court heard the contract dispute."], "k": 5, "lane": "legal",
                              "profile": "gtr-t5"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["lane"] == "legal" and out["details"]["policy"]["tau_snap"] == 0.94  # legal lane override
    assert "court" in out["candidates"][0]["text"] or "judge" in out["candidates"][0]["text"]


def test_generate_returns_steps(text_client):
    bank, c = text_client
    prompt = f"{bank.texts[12]} {bank.texts[13]}"  # bank text: an echo would be the best match
    for profile in (None, "gtr-t5"):
        r = c.post("/generate", json={"prompt": prompt, "steps": 6, **({"profile": profile} if profile else {})})
        assert r.status_code == 200, r.text
        out = r.json()
        assert len(out["steps"]) == 6 and out["prompt_chunks"] and out["details"]["profile"] == (profile or "greedy")
        assert " ".join(out["prompt_chunks"]).split() == prompt.split()
        for s in out["steps"]:
            assert s["decision"] in ("SNAP", "BLEND", "NOVEL") and s["text"] and s["title"].startswith("Story")
            assert s["text"] not in prompt
        assert_no_repeats(out)
    r = c.post("/generate", json={"prompt": prompt, "profile": "creative"})
    assert r.status_code == 422 and "vecrag calibrate" in r.json()["detail"]
    for bad in ({"prompt": "x", "steps": 0}, {"prompt": "x", "steps": 65}, {"prompt": ""},
                {"prompt": "x", "k": 0}, {"prompt": "x" * 4001}):
        assert c.post("/generate", json=bad).status_code == 422, bad


# ---- /generate: no repeats, the continuation, calibrated profiles ---------------------------------------------
def test_generate_default_is_greedy_and_never_repeats(gen_app):
    """Uncalibrated: greedy SNAPs every step to the best chunk not shown yet. The prompt is chunk 40's own text, so
    the best match of the first step is chunk 40 itself: it must not come back (no echo), nor any chunk twice."""
    bank, c = gen_app
    r = c.post("/generate", json={"prompt": bank.texts[40], "steps": 12})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["prompt_chunks"] == [bank.texts[40]] and out["details"]["profile"] == "greedy"
    assert out["details"]["calibration"] is None
    assert [s["decision"] for s in out["steps"]] == ["SNAP"] * 12
    assert 40 not in [s["text_id"] for s in out["steps"]]
    assert_no_repeats(out)
    assert out["continuation"] == " ".join(s["text"] for s in out["steps"])  # SNAP text as is


def test_generate_marks_approximate_steps_in_the_continuation(gen_app):
    """gtr-t5's absolute thresholds are far above a random-walk bank's cosines: the steps are approximate."""
    bank, c = gen_app
    out = c.post("/generate", json={"prompt": bank.texts[100], "steps": 8, "profile": "gtr-t5"}).json()
    assert any(s["approx"] for s in out["steps"])
    for s in out["steps"]:
        assert (f"[~ {s['text']}]" in out["continuation"]) is s["approx"]
    assert_no_repeats(out)


def test_next_and_generate_agree_and_do_not_share_state(gen_app):
    """/generate's first step from chunk 12's text is /next's choice from chunk 12; a generation in between
    (which bans the chunks it showed) leaves the next /next unchanged."""
    bank, c = gen_app
    before = c.post("/next", json={"context_ids": [12], "k": 10}).json()
    out = c.post("/generate", json={"prompt": bank.texts[12], "steps": 6}).json()
    after = c.post("/next", json={"context_ids": [12], "k": 10}).json()
    assert out["steps"][0]["text_id"] == before["chosen"]["id"]
    assert after["candidates"] == before["candidates"] and after["chosen"] == before["chosen"]


@pytest.mark.parametrize("profile", ["conservative", "neutral", "creative"])
def test_calibrated_profile_without_calibration_is_422(gen_app, profile):
    bank, c = gen_app
    for path, body in (("/generate", {"prompt": bank.texts[3]}), ("/next", {"context_ids": [3]})):
        r = c.post(path, json={**body, "profile": profile})
        assert r.status_code == 422, r.text
        msg = r.json()["detail"]
        assert f"vecrag calibrate {bank.path} --lvm heuristic:ewma --retriever heuristic:last" in msg
        assert profile in msg and "greedy" in msg


def test_calibration_makes_neutral_the_default(cal_app):
    bank, c = cal_app
    d = c.get("/healthz").json()["decoder"]
    assert d["calibrated"] is True and d["default_profile"] == "neutral" and d["calibrate_command"] is None
    assert d["calibration"].endswith(".json") and d["available_profiles"] == d["profiles"]
    out = c.post("/generate", json={"prompt": bank.texts[40], "steps": 10}).json()
    assert out["details"]["profile"] == "neutral" and out["details"]["calibration"] == d["calibration"]
    assert len(out["steps"]) == 10 and 40 not in [s["text_id"] for s in out["steps"]]
    assert_no_repeats(out)
    nxt = c.post("/next", json={"context_ids": [12, 13, 14], "k": 7}).json()
    pol = nxt["details"]["policy"]
    assert nxt["details"]["profile"] == "neutral" and pol["tau_snap"] < 0.92  # calibrated, not GTR-T5's
    expect = "SNAP" if nxt["c"] >= pol["tau_snap"] else ("NOVEL" if nxt["c"] <= pol["tau_novel"] else "BLEND")
    assert nxt["decision"] == expect
    for profile in ("conservative", "creative", "greedy"):
        r = c.post("/generate", json={"prompt": bank.texts[7], "steps": 4, "profile": profile})
        assert r.status_code == 200, r.text
        assert_no_repeats(r.json())
