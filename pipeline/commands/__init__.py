"""CLI subcommands: thin argument parsing around the modules that do the work."""
