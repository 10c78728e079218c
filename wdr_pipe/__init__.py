"""wdr-pipe: from product-image URLs to a trained multi-label fashion tagger."""

__version__ = "0.1.0"
