"""Reading and writing schema files: validated on read (one-line errors), atomic on write."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from parity.contracts.errors import ParityError

Model = TypeVar("Model", bound=BaseModel)


def validation_message(exc: ValidationError) -> str:
    """The first problem of a validation error as 'field 'a.b': message'."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return f"field '{where}': {err['msg']}"


def load_model(model: type[Model], path: Path) -> Model:
    """Read and validate a JSON file; a bad one is a one-line ParityError naming the file and the first bad field."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ParityError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise ParityError(f"{path}: invalid {model.__name__}: {validation_message(exc)}") from None


def write_model(obj: BaseModel, path: Path) -> None:
    """Write a schema file atomically (temp file + rename), so a reader never sees half of one; a model that would
    not read back (e.g. NaN serialised as null into a float field) is refused before anything is written."""
    path = Path(path)
    text = obj.model_dump_json(indent=2) + "\n"
    try:
        type(obj).model_validate_json(text)
    except ValidationError as exc:
        raise ParityError(f"refusing to write {path}: it would not read back as {type(obj).__name__} "
                          f"({validation_message(exc)})") from None
    write_text(path, text)


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically: a temp file beside it (`.NAME.tmp`), renamed over it when complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
