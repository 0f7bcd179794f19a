"""featviz: see what a convolutional network sees.

Importing this package must stay cheap (no torch): shell loops pay it on every call.
"""

__version__ = "0.1.0"
