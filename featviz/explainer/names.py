"""How explained things are named in files: class slugs (``281_tabby``) and file-name-safe
names of layers, methods and labels, cut with a hash when too long.
"""

from __future__ import annotations

import hashlib
import re

# File systems take 255 bytes a name; a name leaves room for its suffixes (".heatmap.png").
MAX_NAME_BYTES = 200


def safe_name(text: str) -> str:
    """A file-name-safe form of a layer or class name: keeps letters, digits, '.', '+', '-',
    '_'. A name longer than MAX_NAME_BYTES (a 235-character label) is cut and ends with a hash
    of the whole, so that two long names never become one."""
    cleaned = re.sub(r"[^\w.+-]+", "_", text.strip()).strip("_") or "_"
    if len(cleaned.encode("utf-8")) <= MAX_NAME_BYTES:
        return cleaned
    digest = hashlib.sha256(cleaned.encode("utf-8")).hexdigest()[:10]
    cut = cleaned.encode("utf-8")[: MAX_NAME_BYTES - 11].decode("utf-8", "ignore")
    return f"{cut}-{digest}"


def class_slug(index: int, label: str | None) -> str:
    return safe_name(f"{index}_{label}") if label else str(index)
