"""parity: prove that a transformers port of a vision model computes what the original implementation computes.

The package has four sides, kept apart by their imports (tests/test_architecture.py checks it):
`parity.contracts` (neutral: schemas, errors, metrics, step protocol), `parity.host` (CLI and orchestration; never
imports torch), `parity.origin` (runs inside origin environments; never imports transformers) and `parity.port` (runs
inside the transformers environment; never imports an original package). `parity.runtime` holds the torch helpers both
environment sides share; `parity.families` holds one package per model family.
"""

__version__ = "0.2.0"
