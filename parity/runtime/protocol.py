"""The environment end of the step protocol (parity.contracts.steps): read a request, serve it, answer."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ValidationError

from parity.contracts.errors import ParityError
from parity.contracts.io import validation_message
from parity.contracts.steps import ERROR_MARKER, PROGRESS_MARKER, REQUESTS, RESPONSE_MARKER

Handler = Callable[[BaseModel], BaseModel]

STALL_AT = "PARITY_TEST_STALL_AT"
"""Fault injection for the reliability suite (tests/test_reliability.py): a step stops for good right after reporting
a progress message that starts with this variable's value, so a test can kill -9 the host at a known point."""


def progress(message: str) -> None:
    print(f"{PROGRESS_MARKER}{message}", file=sys.stderr, flush=True)
    stall = os.environ.get(STALL_AT)
    if stall and message.startswith(stall):
        while True:
            time.sleep(60)


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message on one line: torch's multi-line errors ("Error(s) in loading state_dict for Sam:" then
    one line per key) keep their substance."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def serve(side: str, handlers: dict[str, Handler], argv: list[str] | None = None) -> int:
    """`python -m parity.<side> REQUEST.json`: exit 0 with a response line, 2 with a one-line error, 3 when an
    unexpected exception escaped (its traceback goes to the log, its first line to the error marker)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) != 1:
            raise ParityError(f"usage: python -m parity.{side} REQUEST.json")
        try:
            request = REQUESTS.validate_json(Path(args[0]).read_text())
        except ValidationError as exc:
            raise ParityError(f"{args[0]}: invalid step request: {validation_message(exc)}") from None
        if request.step not in handlers:
            raise ParityError(f"step {request.step!r} does not run in parity.{side}")
        response = handlers[request.step](request)
    except ParityError as exc:
        print(f"{ERROR_MARKER}{exc}", file=sys.stderr, flush=True)
        return 2
    except Exception as exc:  # an unexpected failure still ends in one line the host can show
        traceback.print_exc()
        print(f"{ERROR_MARKER}{type(exc).__name__}: {one_line(exc)}", file=sys.stderr, flush=True)
        return 3
    print(f"{RESPONSE_MARKER}{response.model_dump_json()}", file=sys.stderr, flush=True)
    return 0
