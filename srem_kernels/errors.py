"""The exceptions the package raises of its own, in a module everything may import (the
backends raise BackendUnavailable; the registry, which imports the backends, catches it)."""


class BackendUnavailable(RuntimeError):
    """Raised by a backend's loader when it cannot run on this machine; the message says why."""


class SelfCheckError(RuntimeError):
    """Raised when a backend's self-check (srem_kernels.selfcheck, or its first use in a process)
    finds a result outside SPEC.md's tolerances: the message names the backend, the case, the
    error and how to choose another backend."""
