"""`vecrag bank import | info | split` and the encoder-consistency refusals."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vecrag.bank.encode import default_model_path
from vecrag.bank.store import Bank
from vecrag.cli import main
from vecrag.errors import VecragError


def _own_vectors(tmp_path, n_art=5, per=4, dim=768, seed=0, shuffle=True):
    """768-D unit vectors (a stand-in for a user's GTR-T5 export) and metadata rows, rows shuffled."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n_art * per, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = [{"article_id": f"doc-{a}", "position": p, "text": f"text {a}.{p}", "title": f"Doc {a}",
             "lane": "legal" if a % 2 else "science"} for a in range(n_art) for p in range(per)]
    order = rng.permutation(len(rows)) if shuffle else np.arange(len(rows))
    return v[order], [rows[i] for i in order]


def _write(tmp_path, v, rows, fmt="parquet"):
    np.save(tmp_path / "vecs.npy", v)
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "meta.parquet")
        return tmp_path / "vecs.npy", tmp_path / "meta.parquet"
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "vecs.npy", tmp_path / "meta.jsonl"


def _import(vecs, meta, out, *extra):
    return main(["bank", "import", "--vectors", str(vecs), "--meta", str(meta), "--out", str(out),
                 "--encoder-name", "gtr-t5-base", *extra])


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_import_sorts_and_keeps_vectors_with_their_rows(tmp_path, fmt):
    v, rows = _own_vectors(tmp_path)
    vecs, meta = _write(tmp_path, v, rows, fmt)
    assert _import(vecs, meta, tmp_path / "bank", "--dtype", "float32", "--dim", "768") == 0
    bank = Bank.open(tmp_path / "bank", verify=True)
    assert (bank.n, bank.dim, bank.manifest["n_articles"]) == (20, 768, 5)
    assert bank.encoder["name"] == "gtr-t5-base" and bank.manifest["import"]["reordered"]
    # chunk i holds the vector that came with its (article, position) row
    by_text = {r["text"]: v[i] for i, r in enumerate(rows)}
    for i, t in enumerate(bank.texts):
        assert np.array_equal(bank.vectors[i], by_text[t])
    assert (bank.position_of.reshape(5, 4) == np.arange(4)).all()
    first_seen = list(dict.fromkeys(r["title"] for r in rows))  # articles keep their order of first appearance
    assert bank.articles.column("title").to_pylist() == first_seen and first_seen != sorted(first_seen)
    assert bank.info()["lanes"] == {"science": 3, "legal": 2}


def test_import_npz_key_and_normalize(tmp_path):
    v, rows = _own_vectors(tmp_path, shuffle=False)
    _, meta = _write(tmp_path, v, rows)
    np.savez(tmp_path / "x.npz", emb=v * 3.0, other=np.zeros(3))
    assert _import(f"{tmp_path / 'x.npz'}:emb", meta, tmp_path / "b1") == 2  # not unit without --normalize
    assert _import(f"{tmp_path / 'x.npz'}:emb", meta, tmp_path / "b1", "--normalize") == 0
    assert _import(tmp_path / "x.npz", meta, tmp_path / "b2", "--normalize") == 2  # two arrays: name one
    np.testing.assert_allclose(Bank.open(tmp_path / "b1").vectors_f32(), v, atol=2e-3)


@pytest.mark.parametrize("case", ["nan", "dim", "norm", "rows", "dup"])
def test_import_bad_vectors_exit_2_name_file_and_fix(tmp_path, capsys, case):
    v, rows = _own_vectors(tmp_path, shuffle=False)
    extra: list[str] = []
    if case == "nan":
        v[7, 3] = np.nan
        extra = ["--normalize"]
    elif case == "dim":
        extra = ["--dim", "384"]
    elif case == "norm":
        v *= 2
    elif case == "rows":
        rows = rows[:-1]
    elif case == "dup":
        rows[1]["position"] = 0
    vecs, meta = _write(tmp_path, v, rows)
    out = tmp_path / "bank"
    capsys.readouterr()
    assert _import(vecs, meta, out, *extra) == 2
    err = capsys.readouterr().err
    assert "fix:" in err
    assert str(vecs if case in ("nan", "dim", "norm") else meta) in err
    assert {"nan": "NaN", "dim": "dimension 768, expected 384", "norm": "--normalize", "rows": "19 metadata rows",
            "dup": "same (article_id, position)"}[case] in err
    assert not (out / "manifest.json").exists()


def test_failed_import_leaves_existing_bank_intact(tmp_path):
    v, rows = _own_vectors(tmp_path)
    vecs, meta = _write(tmp_path, v, rows)
    out = tmp_path / "bank"
    assert _import(vecs, meta, out) == 0
    before = Bank.open(out).manifest["checksums"]
    assert _import(vecs, meta, out) == 2  # refuses to replace without --overwrite
    v[0] = np.nan
    np.save(vecs, v)
    assert _import(vecs, meta, out, "--overwrite") == 2
    assert Bank.open(out, verify=True).manifest["checksums"] == before


def test_bank_from_another_encoder_is_refused(tmp_path, capsys):
    v, rows = _own_vectors(tmp_path)
    vecs, meta = _write(tmp_path, v, rows)
    assert _import(vecs, meta, tmp_path / "bank") == 0
    bank = Bank.open(tmp_path / "bank")
    with pytest.raises(VecragError, match="encoder mismatch.*gtr-t5-base.*all-MiniLM-L6-v2"):
        bank.check_encoder("all-MiniLM-L6-v2", 384)
    bank.check_encoder("gtr-t5-base", 768)
    # prototypes need the bank's encoder: gtr-t5-base cannot be loaded offline -> a missing-model error
    capsys.readouterr()
    assert main(["bank", "lanes", str(bank.path), "--lanes", "default", "--device", "cpu"]) == 2
    assert "gtr-t5-base" in capsys.readouterr().err
    # ... and another encoder's model (384-D MiniLM) is refused by the manifest check
    assert main(["bank", "lanes", str(bank.path), "--lanes", "default", "--device", "cpu",
                 "--encoder", str(default_model_path())]) == 2
    err = capsys.readouterr().err
    assert "encoder mismatch" in err and "manifest.json" in err
    Bank.open(bank.path, verify=True)


def test_info_verify_and_split(synthetic_bank, capsys):
    path = str(synthetic_bank.path)
    capsys.readouterr()
    assert main(["bank", "info", path, "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verified"] and info["n_chunks"] == synthetic_bank.n and info["dim"] == 32
    assert main(["bank", "info", path]) == 0
    assert "synthetic-random-walk" in capsys.readouterr().out
    before = synthetic_bank.articles.column("split").to_pylist()
    assert main(["bank", "split", path, "--seed", "7", "--ratios", "0.5,0.25,0.25"]) == 0
    bank = Bank.open(path, verify=True)
    after = bank.articles.column("split").to_pylist()
    assert after != before and bank.manifest["split"] == {"seed": 7, "ratios": [0.5, 0.25, 0.25]}
    assert 15 <= after.count("train") <= 45
    assert main(["bank", "split", path, "--ratios", "0.5,0.5,0.5"]) == 2
    # a damaged file is caught by --verify
    with open(bank.path / "chunks.parquet", "ab") as f:
        f.write(b"x")
    capsys.readouterr()
    assert main(["bank", "info", path, "--verify"]) == 2
    assert "checksum mismatch" in capsys.readouterr().err
