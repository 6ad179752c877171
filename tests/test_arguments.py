"""arguments.run_main: how an examples/ script ends (one line on stderr and a status for bad input, no traceback);
save_image_atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
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


def test_save_image_atomically_writes_whole_images_or_keeps_the_old_one(tmp_path):
    from referencelcm.arguments import save_image_atomically

    path = tmp_path / "validation" / "step-1" / "grid.png"
    first = PIL.Image.new("RGB", (4, 3), (10, 200, 30))
    assert save_image_atomically(first, path) == path
    assert np.array_equal(np.asarray(PIL.Image.open(path)), np.asarray(first))

    class Interrupted(Exception):
        pass

    class HalfWritten(PIL.Image.Image):  # writes some bytes, then the run is stopped
        def save(self, fp, *args, **kwargs):
            Path(fp).write_bytes(b"\x89PNG half")
            raise Interrupted

    broken = HalfWritten()
    with pytest.raises(Interrupted):
        save_image_atomically(broken, path)
    assert np.array_equal(np.asarray(PIL.Image.open(path)), np.asarray(first))
    assert sorted(entry.name for entry in path.parent.iterdir()) == ["grid.png"]
