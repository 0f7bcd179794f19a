"""CLI: the ``featviz`` command, a thin client over ``run`` and the library.

``app`` registers the commands, ``commands/`` holds them (one module per family), ``options/``
the options they share, ``help`` the 80-column help, ``terminal`` the progress, the per-image
lines and the one error funnel (exit codes 0, 1, 2), ``text`` the tables a person reads,
``launch`` the console script (a warm worker takes the call when one runs), ``serve`` the
worker's entry. Only this package imports typer or prints.
"""
