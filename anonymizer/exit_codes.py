"""The command line's exit codes, shared by every command."""

RELEASED = 0      # released, or a command that succeeded
ERROR = 1         # an unexpected failure
USAGE = 2         # bad arguments, policy, model or input location
QUARANTINED = 3   # the run failed validation (or `verify` found a problem): nothing released


class UsageError(ValueError):
    """Bad arguments or input locations, found before any work: the command line exits USAGE."""
