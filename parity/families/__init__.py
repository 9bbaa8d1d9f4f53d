"""One package per model family, each holding both halves: origin.py (runs in the origin environment, never imports
transformers) and port.py (runs in the transformers environment, never imports the original package)."""
