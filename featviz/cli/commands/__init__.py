"""The commands, one module per family; ``cli/app.py`` registers each function as a command,
in the order ``featviz --help`` lists them.

``features`` (maps, top, filters), ``explain`` (cam, compare, score, sanity), ``dream``,
``info`` (layers, models), ``worker`` (worker start, stop, status). A command's signature is its
options (the shared groups through ``cli.options.shared.shared_options``), its docstring its
help; its body builds the plan, runs it inside ``terminal.errors()`` and reports.
"""
