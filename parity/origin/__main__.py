"""`python -m parity.origin REQUEST.json` (generate, dump, import-fixture, recipe). The request is validated before
torch and the family's original package are imported, so a malformed one fails fast."""

import sys

from parity.runtime.protocol import serve


def _step(name: str):
    def handler(request):
        from parity.origin import steps

        return getattr(steps, name)(request)

    return handler


sys.exit(serve("origin", {"generate": _step("generate"), "dump": _step("dump"),
                          "import-fixture": _step("import_fixture"), "recipe": _step("new_recipe")}))
