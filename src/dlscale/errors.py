"""The exceptions the CLI turns into an exit code instead of a traceback.

``UserError`` means "the user asked for something we cannot do": the CLI prints one
line ``error: <message>`` and exits with 2; the Python API lets it propagate so notebooks
see it as an exception. Messages say what is wrong and how to fix it. ``Stopped`` means a
signal ended the run after it saved its work: exit code 128 + the signal's number. Both
live here, below every layer, because the trainer and the launcher raise them alike.
"""


class UserError(Exception):
    """Bad input from the user: unknown name, bad path, corrupt file, impossible value."""


class Stopped(Exception):
    """The run stopped on a signal after saving a checkpoint (not a user's mistake)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.said = False  # already printed (before a SLURM requeue ended the job)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    import signal  # here, not at the top: it loads enum, 6 ms of every `import dlscale`

    return signal.Signals(signum).name
