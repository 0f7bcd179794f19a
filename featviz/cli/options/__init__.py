"""The options commands share, declared once in groups, and the decorator that adds them.

``shared`` holds ``shared_options``, which swaps a command's ``ModelRequest``, ``RunRequest``,
``OutputRequest``, ``Explaining`` or ``Report`` parameter for the options it is made of. One
module per group, each with the function packing the group's values into its frozen value:
``model`` (--model, --weights, --device…), ``run`` (the inputs, how they are read, Ray),
``output`` (the output folder, picture formats, and ``Report``: --json, --quiet), ``explain``
(what cam, compare, score and sanity explain). ``panels`` names the ``--help`` headings,
``common`` the options that several commands declare alike, outside the groups.
"""
