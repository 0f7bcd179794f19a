"""Model: building the network a user names, once, ready to explain.

``load`` builds it (``sources/`` are the plug-ins: torchvision names, timm/, hf:, a user's
``file.py:callable``), freezes and traces it; ``cache`` keeps built models in the warm worker;
``checkpoints`` reads state dicts safely; ``labels`` names the classes; ``precision`` runs it
under autocast; ``options`` is what a command asks of it. A new model source is one module in
``sources/`` and one line in ``sources.source_for``.
"""
