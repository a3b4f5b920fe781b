"""The `vecrag` command. Subcommands live one per module in ``vecrag.commands``.

Each command module defines ``COMMAND`` (a tuple path such as ``("eval", "baselines")``), ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``. Modules import heavy libraries (torch, faiss,
sentence-transformers) inside ``run`` so that ``vecrag --help`` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from types import FrameType, ModuleType

import vecrag
from vecrag.errors import VecragError

# The process set-up (OMP_WAIT_POLICY=PASSIVE + GOMP_SPINCOUNT, tokenizer parallelism, JAX preallocation) before
# anything imports numpy, torch or faiss: their OpenMP runtimes read it once, when they load. The command modules
# import those inside ``run``; ``main`` calls it again (a no-op then) for callers that imported this module late.
vecrag.configure_runtime()

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


def command_name(args: argparse.Namespace) -> str:
    """'ingest', 'train retriever', 'bank merge', ... ('' before a command is chosen)."""
    top = getattr(args, "command", None) or ""
    sub = getattr(args, f"{top}_command", None) if top else None
    return f"{top} {sub}" if sub else top


def continue_hint(args: argparse.Namespace) -> str:
    """What is kept after an interruption and how to continue, for the command that was interrupted."""
    name = command_name(args)
    if name.startswith("train"):
        run = getattr(args, "resume", None) or getattr(args, "out", None)
        task = name.partition(" ")[2] or "TASK"
        return ("checkpoints already written are kept; continue with "
                f"`vecrag train {task} --resume {run or 'RUN'}` (rerunning the same command is refused)")
    if name == "ingest":
        return "committed batches are kept; rerun the same command to continue from the last one"
    if name == "serve":
        return "the server was stopped"
    if name in ("bank merge", "bank import"):
        return "no half-written bank is left; rerun the command"
    return "files already written are complete (vecrag writes atomically); rerun the command"


@contextlib.contextmanager
def _sigterm_message(args: argparse.Namespace) -> Iterator[None]:
    """On SIGTERM print one line (what is kept, how to continue), then die of the signal as before (exit 143).

    Not installed outside the main thread, when SIGTERM is ignored or when its handler was set outside Python;
    the previous handler is restored afterwards (tests call main in-process)."""
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if previous is None or previous == signal.SIG_IGN:
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if os.environ.get("RANK", "0") == "0":  # torchrun: one line, not one per worker
            sys.stderr.write(f"vecrag: stopped by SIGTERM; {continue_hint(args)}\n")
            sys.stderr.flush()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_command(args: argparse.Namespace) -> int:
    """Run the command; every error a user can act on becomes one paragraph on stderr and exit 2."""
    try:
        return int(args._run(args) or 0)
    except VecragError as e:
        print(f"vecrag: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `vecrag search ... | head`: the reader left; nothing to report
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        from vecrag.fsutil import fs_error

        if args.verbose:
            traceback.print_exc()
        print(f"vecrag: error: {fs_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vecrag: interrupted; {continue_hint(args)}", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    vecrag.configure_runtime()  # before build_parser imports the command modules (and anything heavy)
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
    with _sigterm_message(args):
        return _run_command(args)


if __name__ == "__main__":
    sys.exit(main())
