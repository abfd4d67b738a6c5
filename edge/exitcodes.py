"""Process exit codes, from sysexits.h, shared by every command and the daemon."""

EX_OK = 0
EX_DATAERR = 65  # bad input data: unreadable images, malformed data sets
EX_SOFTWARE = 70  # an internal error: a bug, not the user's input
EX_CANTCREAT = 73  # cannot create an output, e.g. an --out that must not be replaced
EX_IOERR = 74  # a disk that filled up or a folder that became unwritable while working
EX_TEMPFAIL = 75  # run: storage.dir full, read-only or unwritable at start; systemd restarts it after a delay
EX_CONFIG = 78  # configuration error; systemd's RestartPreventExitStatus stops crash-loops on it
