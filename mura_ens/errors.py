"""Exceptions that mean "the user asked for something unusable".

The CLI turns any :class:`UsageError` into one line on stderr and exit code 2
(a traceback only with ``MURA_ENS_DEBUG=1``). Library callers catch them like
any exception.
"""


class UsageError(Exception):
    """An unusable argument: missing folder, bad manifest, unknown option value."""


class ManifestError(UsageError):
    """A manifest that fails validation. ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = str(source)
        self.problems = list(problems)
        shown = self.problems[:20]
        more = len(self.problems) - len(shown)
        text = f"invalid manifest {self.source}: " + "; ".join(shown)
        if more > 0:
            text += f"; ... and {more} more"
        super().__init__(text)


class PluginError(UsageError):
    """Unknown or broken plugin, or bad plugin parameters."""


class ModelError(UsageError):
    """An ONNX model that cannot be used (wrong input shape, missing metadata)."""


class MissingExtraError(UsageError, ImportError):
    """An optional dependency group is not installed.

    Both a :class:`UsageError` (the CLI prints its one line, exit code 2) and an
    :class:`ImportError` (what Python callers expect when a dependency is
    missing); the message is the one-line ``pip install`` command.
    """

    def __init__(self, what: str, extra: str):
        self.what = what
        self.extra = extra
        super().__init__(f"{what} needs the [{extra}] extra: pip install 'mura-ens[{extra}]'")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.what, self.extra)


class RunFailed(Exception):
    """A run that stopped part-way for a reason outside the user's arguments.

    The CLI prints one line and exits with code 1; what was finished is kept
    (scoring's journal), so the message says how to continue.
    """


class Terminated(KeyboardInterrupt):
    """The process was sent SIGTERM (a scheduler, ``docker stop``, ``kill``): handled exactly like Ctrl-C.

    A ``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` / ``finally`` that cleans up after Ctrl-C
    (locks released, unfinished run folders deleted, the scoring journal closed) runs for it too; the CLI
    exits with the same code (130).
    """
