"""The exceptions the package raises of its own, in a module everything may import (the
backends raise BackendUnavailable; the registry, which imports the backends, catches it)."""


class BackendUnavailable(RuntimeError):
    """Raised by a backend's loader when it cannot run on this machine; the message says why."""
