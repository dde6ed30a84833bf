"""Teeny: quantize language models and prove what they kept. This is the plugin core."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("teeny")
"""Decorate plugin hook implementations with ``@teeny_core.hookimpl``."""
