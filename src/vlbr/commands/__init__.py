"""One module per `vlbr` subcommand; each exposes a click `command`."""
