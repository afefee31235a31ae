"""The one exception hierarchy for user-facing errors.

Every error a user can cause or meet derives from :class:`LabError`; the CLI
catches it once and prints ``labctl: error: <message>`` on one line.
Third-party errors are translated at the boundary with ``raise ... from``.
"""


class LabError(Exception):
    """Root of every user-facing labctl error. ``str(err)`` is one line."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split())  # always one line


class ConfigError(LabError, ValueError):
    """lab.yaml or a command-line value is wrong; the message names the field path."""

    def __init__(self, path: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, hint)
        self.path = path


class ImageError(LabError):
    """An image could not be found, downloaded, verified or built."""


class BackendError(LabError):
    """The hypervisor (libvirt, VirtualBox) refused or failed an operation."""


class ProvisionError(LabError):
    """A node failed a bootstrap phase or did not reach it in time."""


class StateError(LabError):
    """The lab's state directory or files are missing, unsafe or inconsistent."""
