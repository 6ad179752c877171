"""arguments.run_main: how an examples/ script ends (one line on stderr and a status for bad input, no traceback)."""

from __future__ import annotations

import pytest

from referencelcm.arguments import run_main


def _raise(error: BaseException):
    def main():
        raise error
    return main


def test_run_main_exits_with_what_main_returns():
    for returned, status in ((None, None), (0, 0), (3, 3)):
        with pytest.raises(SystemExit) as raised:
            run_main(lambda: returned)
        assert raised.value.code == status  # None: exit status 0


@pytest.mark.parametrize("error", [ValueError("--resolution must be >= 1, got 0."), FileNotFoundError("no data"),
                                   FloatingPointError("Loss became nan at step 3")])
def test_run_main_reports_bad_input_in_one_line(error, capsys):
    with pytest.raises(SystemExit) as raised:
        run_main(_raise(error))
    assert raised.value.code == 1 and capsys.readouterr().err == f"error: {error}\n"
    with pytest.raises(SystemExit) as raised:
        run_main(_raise(error), errors=(type(error),), status=2)
    assert raised.value.code == 2


def test_run_main_lets_other_errors_through():
    with pytest.raises(KeyError):
        run_main(_raise(KeyError("a bug")))
    with pytest.raises(ValueError):
        run_main(_raise(ValueError("not listed")), errors=(FileNotFoundError,))
