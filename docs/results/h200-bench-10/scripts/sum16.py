import json, pathlib
R = pathlib.Path(".gpu/r16")
print(f"{'run':>8} {'samples/s by epoch (train wall, validation excluded)':<60} {'val R@10 by epoch':<50} final stats")
for name in ["proc", "procnog", "sync", "syncnog"]:
    p = R / name / "log.jsonl"
    if not p.exists():
        print(name, "no log"); continue
    recs = [json.loads(x) for x in open(p)]
    n = next(r["n_train"] for r in recs if r.get("event") == "start")
    val = [r for r in recs if r["kind"] == "val"]
    sps = [n / (b["time"] - a["time"] - b["val_s"]) for a, b in zip(val, val[1:])]
    tr = [r for r in recs if r["kind"] == "train"]
    last = tr[-1] if tr else {}
    keys = {k: round(v, 1) for k, v in last.items() if k.startswith(("miner_", "mining_"))}
    print(f"{name:>8} {' '.join(f'{x:.0f}' for x in sps):<60} {' '.join(format(v['R@10'], '.4f') for v in val):<50} {keys}")
