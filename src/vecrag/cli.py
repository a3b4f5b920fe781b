"""The `vecrag` command. Subcommands live one per module in ``vecrag.commands``.

Each command module defines ``COMMAND`` (a tuple path such as ``("eval", "baselines")``), ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy libraries (torch, faiss,
sentence-transformers) inside ``run`` so that ``vecrag --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from types import ModuleType

import vecrag  # noqa: F401  (sets OMP_WAIT_POLICY etc. before numpy/torch/faiss load)
from vecrag.errors import VecragError

GROUP_HELP = {
    "bank": "inspect, import, merge and re-split banks",
    "eval": "evaluate baselines, retrievers, LVMs, the cascade and the decoder",
    "train": "train an LVM or a two-tower retriever (resumable)",
}


def _command_modules() -> list[ModuleType]:
    import vecrag.commands as pkg

    mods = [importlib.import_module(f"vecrag.commands.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    return sorted((m for m in mods if hasattr(m, "COMMAND")), key=lambda m: m.COMMAND)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vecrag",
        description="Vector-native generation with retrieval grounding. Typical flow: "
        "ingest -> index -> eval baselines -> train lvm / train retriever -> eval -> generate / serve.",
    )
    parser.add_argument("--version", action="version", version=f"vecrag {vecrag.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for mod in _command_modules():
        path = mod.COMMAND
        parent = sub
        for i, name in enumerate(path[:-1]):
            key = "/".join(path[: i + 1])
            if key not in groups:
                gp = parent.add_parser(name, help=GROUP_HELP.get(name, ""), description=GROUP_HELP.get(name))
                groups[key] = gp.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
                gp.set_defaults(_group_parser=gp)
            parent = groups[key]
        # argparse %-formats help strings: escape literal percent signs such as "%SNAP"
        help_text = mod.HELP.replace("%", "%%")
        desc = getattr(mod, "DESCRIPTION", mod.HELP)  # descriptions are not %-formatted
        p = parent.add_parser(path[-1], help=help_text, description=desc,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:
        # faiss logs its AVX512/AVX2 probing at INFO on every start; bm25s sets its own logger to DEBUG when
        # imported (later, lazily), so its records are dropped at the handler rather than at the logger.
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.INFO)
    if not hasattr(args, "_run"):
        (getattr(args, "_group_parser", None) or parser).print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except VecragError as e:
        print(f"vecrag: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vecrag: interrupted (work already committed is kept; rerun the command to continue)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
