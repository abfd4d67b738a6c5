"""Exit codes of every lineguard command (sysexits.h), so scripts and systemd can tell problems apart."""
EX_OK = 0
EX_DATAERR = 65  # bad input data
EX_SOFTWARE = 70
EX_CANTCREAT = 73  # cannot create an output
EX_IOERR = 74
EX_CONFIG = 78  # configuration error; systemd's RestartPreventExitStatus stops crash-loops on it
