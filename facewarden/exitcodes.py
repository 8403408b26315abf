"""Process exit codes (sysexits.h where one fits), shared by every command.

systemd units use them: ``RestartPreventExitStatus=78`` stops a unit whose configuration
or models are wrong from being restarted forever, while 69 (a service we need is down,
e.g. the broker or the HTTP port) is worth restarting later.
"""

EX_OK = 0
EX_FAILED = 1
EX_USAGE = 2
EX_CONFIG = 78
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
