"""The origin runtime: runs inside an origin environment (a venv or image with the ORIGINAL package), loads the
original checkpoint with the original code, records activations and writes a dump. Never imports transformers."""
