"""Small helpers shared by the CLI tests."""


def one_error_line(err: str) -> str:
    """The CLI's stderr must hold exactly one non-empty line (the error); return it."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[-1]
