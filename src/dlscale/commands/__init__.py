"""One module per ``dlscale`` subcommand: ``add_parser(subparsers)`` adds its flags,
``run(args)`` runs it and returns the exit code."""
