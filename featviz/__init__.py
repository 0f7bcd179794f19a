"""featviz: see what a vision model sees (convolutional networks and vision transformers).

Importing this package must stay cheap (no torch): shell loops pay it on every call.
"""

__version__ = "0.1.0"
