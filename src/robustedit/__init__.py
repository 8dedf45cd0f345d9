"""robustedit: edit the facts a language model knows, and measure how well the edit holds."""

__version__ = "0.1.0"
