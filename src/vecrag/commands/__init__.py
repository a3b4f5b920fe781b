"""One module per CLI subcommand; discovered by vecrag.cli (see its docstring for the protocol)."""
