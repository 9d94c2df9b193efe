"""User-facing errors.

Anything the user can fix (a bad file, a wrong flag, a missing package) raises an
`AnatomistError`; the CLI prints its message on one line and exits non-zero, with no
traceback unless `--debug` is given. Internal invariants stay plain `assert`s.
"""

from __future__ import annotations


class AnatomistError(Exception):
    """An error the user can act on; its message is one line."""


class DataError(AnatomistError):
    """Bad input data, located by file, row and field.

    >>> str(DataError("missing field", file="d.jsonl", row=3, field="chosen"))
    'd.jsonl: row 3: field "chosen": missing field'
    """

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 field: str | None = None):
        self.file, self.row, self.field, self.reason = file, row, field, message
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f'field "{field}"')
        super().__init__(": ".join([*where, message]))
