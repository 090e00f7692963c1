"""The errors the command line reports as one line: :class:`UserError` (a user mistake, exit
status 2) and :class:`RunError` (a run that could not finish for a reason outside its settings,
exit status 1).

Every module raises these (or their subclasses: ``_validate.ArgumentValueError``,
``tools.common.UsageError``, ``train.TrainError``; ``train.Diverged``), and ``tat_ext.cli.main``
catches them once. A UserError records the argument it is about, either as a Python argument name
(``"shortcut_weight"``) or as a command-line flag (``"--shortcut-weight"``); the command line names
the flag: ``argument --shortcut-weight: must be >= 0 and < 1, got 1.0``.
"""
from __future__ import annotations

import re
from typing import Optional

__all__ = ["RunError", "UserError", "to_flag"]

# A bare ``name=`` (a Python keyword argument named in a message, e.g. "pass blocks= for a custom
# plan"): written as its flag on the command line.
_KEYWORD = re.compile(r"(?<![\w\-.'\"])([a-z][a-z0-9_]*)=(?=[\s,;)]|$)")


_PYTHON_NAME = re.compile(r"[a-z_][a-z0-9_]*(\[.*\])?")


def to_flag(argument: Optional[str]) -> Optional[str]:
    """The command-line flag of ``argument``: ``"shortcut_weight"`` -> ``"--shortcut-weight"``;
    an index (``"blocks[1]"``) names its argument; a flag (``"--out"``) or anything else (an
    environment variable) stays as it is."""
    if not argument or not _PYTHON_NAME.fullmatch(argument):
        return argument or None
    return "--" + argument.split("[", 1)[0].replace("_", "-")


class UserError(ValueError):
    """A user mistake about one argument (a bad value, a missing file or device, an unwritable
    path). ``argument`` names it (a Python argument name or a flag; None when no single argument
    is at fault); ``str(error)`` is ``message``, the full sentence for Python callers."""

    def __init__(self, argument: Optional[str], message: str) -> None:
        super().__init__(message)
        self.argument = argument
        self.message = message

    @property
    def flag(self) -> Optional[str]:
        """The command-line flag of :attr:`argument` (see :func:`to_flag`)."""
        return to_flag(self.argument)

    @property
    def detail(self) -> str:
        """:attr:`message` without its leading mention of the argument ("eta must be ..." ->
        "must be ...")."""
        text = self.message
        names = [n for n in (self.argument, self.flag) if n]
        for prefix in [f"argument {n}: " for n in names] + [f"{n}: " for n in names] + [f"{n} " for n in names]:
            if text.startswith(prefix):
                return text[len(prefix):]
        return text

    def one_line(self) -> str:
        """The command line's report: ``argument FLAG: DETAIL`` on one line, with Python
        keyword arguments in the text (``pass blocks=``) written as flags (``pass --blocks``)."""
        text = _KEYWORD.sub(lambda m: to_flag(m.group(1)), " ".join(self.detail.split()))
        return f"argument {self.flag}: {text}" if self.flag else text


class RunError(RuntimeError):
    """A run that could not finish for a reason other than its settings (the disk filled up, a
    worker process died, the loss diverged). The command line prints it on one line and exits
    with status 1; what was saved before stays valid."""
