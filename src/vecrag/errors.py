"""One exception type for every error a user can fix; the CLI prints it as a paragraph and exits 2."""

from __future__ import annotations

from pathlib import Path


class VecragError(Exception):
    """An error with a message that names the file at fault and what to do about it."""

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.path = str(path) if path is not None else None
        self.hint = hint
        text = message
        if self.path:
            text = f"{self.path}: {text}"
        if hint:
            text = f"{text}\n  fix: {hint}"
        super().__init__(text)
