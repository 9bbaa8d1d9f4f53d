"""`python -m parity.port REQUEST.json` (the port step). The request is validated before torch and transformers are
imported, so a malformed one fails fast."""

import sys

from parity.runtime.protocol import serve


def _port(request):
    from parity.port.driver import run

    return run(request)


sys.exit(serve("port", {"port": _port}))
