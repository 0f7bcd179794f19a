"""Input limits every command shares (standard library only: the CLI reads them for --help)."""

DEFAULT_MAX_PIXELS = 178_956_970
"""Pillow's own default refusal point (about 13,400 × 13,400; 537 MB as 8-bit RGB): it opens
every photo a 108-megapixel phone takes, and refuses nothing Pillow would open by default."""
