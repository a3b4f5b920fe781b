"""`vecrag bank lanes BANK --lanes SPEC`: (re)assign lanes of an existing bank."""

from __future__ import annotations

import argparse
import json

COMMAND = ("bank", "lanes")
HELP = "assign lanes to an existing bank from lane prototypes (YAML) or k-means clusters"
DESCRIPTION = """\
Recompute every article's lane (its chunks follow) and rewrite chunks.parquet and articles.parquet
atomically, then the manifest (lane record and checksums).

  --lanes FILE.yaml   lane name -> description(s); each article goes to the lane whose embedded
                      description is nearest (cosine) to its mean chunk vector. Needs the bank's encoder.
  --lanes default     the shipped presets/lanes.yaml (science, technology, history, geography, arts, ...)
  --lanes kmeans:K    spherical k-means over article mean vectors; lanes cluster-00.. (00 = largest), with
                      frequent title words and nearest titles per cluster recorded in the manifest.
  --lanes none        remove lanes.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bank", metavar="BANK", help="bank directory")
    p.add_argument("--lanes", required=True, metavar="SPEC", help="FILE.yaml, default, kmeans:K or none")
    p.add_argument("--encoder", default=None,
                   help="local folder of the bank's encoder when its name cannot be loaded (prototypes only)")
    p.add_argument("--device", default="auto", help="encoder device (prototypes only)")


def run(args: argparse.Namespace) -> int:
    from vecrag.bank.lanes import relane_bank
    from vecrag.fsutil import fs_error
    from vecrag.runtime import set_threads

    set_threads()
    try:
        bank = relane_bank(args.bank, args.lanes, device=args.device, encoder=args.encoder)
    except OSError as e:
        raise fs_error(e, what="cannot write the new lanes into the bank (the bank is unchanged)",
                       hint="make the bank's folder writable (or copy the bank somewhere writable, or free space) "
                            "and rerun the command") from e
    print(json.dumps({"bank": str(bank.path), "lanes": bank.info()["lanes"]}))
    return 0
