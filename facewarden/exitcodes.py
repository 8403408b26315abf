"""Process exit codes of every `facewarden` command, in one place.

They follow sysexits.h where one fits, because the systemd units act on them:
``RestartPreventExitStatus=78`` stops systemd from restarting a daemon whose
configuration (or model set) is wrong, since a restart cannot fix either.

| code | name        | meaning                                                            |
|------|-------------|--------------------------------------------------------------------|
| 0    | OK          | success (`process`: every input succeeded)                         |
| 1    | FAILED      | the command ran, but some work failed (`process` rejects, `audit verify` problems) |
| 2    | USAGE       | bad command line or parameters (click's own code; e.g. `--param mode=bogus`) |
| 69   | UNAVAILABLE | a service the daemon needs (broker, store, port) stayed unreachable at start |
| 70   | SOFTWARE    | an internal error (a bug): the traceback is in the log             |
| 78   | CONFIG      | invalid configuration or missing/corrupt model files: fix, then start again |
"""

from __future__ import annotations

from facewarden.errors import ConfigError, FacewardenError, ModelError

OK = 0
FAILED = 1
USAGE = 2
UNAVAILABLE = 69  # EX_UNAVAILABLE
SOFTWARE = 70  # EX_SOFTWARE
CONFIG = 78  # EX_CONFIG: the units' RestartPreventExitStatus

#: Error types whose cure is an operator's edit, never a restart.
CONFIG_ERRORS: tuple[type[FacewardenError], ...] = (ConfigError, ModelError)


def for_error(err: BaseException) -> int:
    """The exit code a command ends with when ``err`` stops it."""
    if isinstance(err, CONFIG_ERRORS):
        return CONFIG
    if isinstance(err, FacewardenError):
        # Codes name their family: "config.no_sources", "model.missing" are config too.
        return CONFIG if err.code.split(".", 1)[0] in ("config", "model") else USAGE
    return SOFTWARE
