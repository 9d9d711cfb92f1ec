"""Sub-commands of ``egw``; see ``gateway.cli.COMMAND_MODULES``."""
