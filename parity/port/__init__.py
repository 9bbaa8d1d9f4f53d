"""The port runtime: runs inside the transformers environment. Converts the dump's state dict with strict accounting,
runs the port on the origin's own inputs, diffs every capture and writes the report. Never unpickles anything and
never imports an original package."""
