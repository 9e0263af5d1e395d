"""One module per subcommand of ``python -m kdtrain``: its parser (``add_parser``) and its run (``run``).

``add_parser`` imports no torch, so ``--help`` answers at once; ``run`` checks the paths the user
gave first and loads torch and the training modules after that, so a wrong path fails in a second.
Flags several commands share are declared once, in kdtrain/commands/flags.py.
"""
