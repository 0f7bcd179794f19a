"""Run: one command's plan, carried out over any number of images.

``plan`` holds what the command line (or a library call) asked for, typed, built once;
``prepare`` loads the model, resolves layers and classes and builds the job and its sinks;
``pipeline`` streams decode → batched compute → render and write, overlapped, memory bounded;
``jobs/`` say what each command does per batch; ``cluster`` hands a prepared run's images to
the actors of a Ray cluster (``--ray``) instead of this process's pipeline; ``heap``,
``interrupts`` and ``sizes`` keep it lean and stoppable. A new command is one job module in
``jobs/``.
"""
