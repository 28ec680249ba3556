"""What a user sees on the command line of both tools: an expected error as one line, a warning as one line,
and the full traceback only when asked (`--debug` before the command, or MPT_DEBUG=1).

Both CLIs are a `CommandGroup`. Its `invoke` is the one place where an expected error becomes click's
`Error: ...` line with exit status 1: the project's own error types (each names the file or URL and what to
do), a missing file or folder, a missing dependency. Any other exception is a bug in MPT: it says so and keeps
its traceback, so the bug can be reported. `mpt_train` extends the expected types with its own.
"""

from __future__ import annotations

import warnings

import click

DEBUG_ENV = "MPT_DEBUG"
# --device and --precision choices of every command of both tools (mpt_train.runtime's, repeated here so that
# --help needs no torch; tests/test_cli_options.py checks every command uses them).
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_PROJECT_PACKAGES = ("mpt_data", "mpt_train")

debug_option = click.option(
    "--debug", is_flag=True, envvar=DEBUG_ENV,
    help=f"Show the full traceback of an error instead of one line (or set {DEBUG_ENV}=1).")


def data_errors() -> tuple[type[BaseException], ...]:
    """The data side's expected error types: the user can fix each from its message."""
    from mpt_data.amass import MotionError
    from mpt_data.body import ModelFileError
    from mpt_data.fileio import LockError
    from mpt_data.images import AnnotationError
    from mpt_data.integrity import StoreError
    from mpt_data.recipe import RecipeError
    from mpt_data.rigs import RigError
    from mpt_data.synth.images import SynthImagesError

    return (StoreError, RecipeError, RigError, LockError, AnnotationError, MotionError, ModelFileError, SynthImagesError,
            FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def missing_dependency(err: BaseException) -> str | None:
    """The top-level name of a third-party module that could not be imported, or None.

    A module of this project that fails to import is a bug, not a missing dependency."""
    if isinstance(err, ModuleNotFoundError) and err.name:
        top = err.name.split(".")[0]
        if top not in _PROJECT_PACKAGES:
            return top
    return None


def one_line(err: BaseException) -> str:
    """The message of ``err`` as the CLI prints it.

    A DataLoader worker's error reaches the main process with the worker's traceback in its message (torch
    re-raises it as the same type); only the original message, its last line, is kept."""
    text = str(err).strip()
    if "Traceback (most recent call last)" in text:
        last = text.splitlines()[-1]
        prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
        text = last[len(prefix):] if last.startswith(prefix) else last.split(": ", 1)[-1]
    return text or type(err).__name__


def expected_message(err: BaseException, expected: tuple[type[BaseException], ...]) -> str | None:
    """The one-line message for an expected error, or None for a bug (which keeps its traceback)."""
    module = missing_dependency(err)
    if module is not None:
        return f"{one_line(err)}: this command needs the Python package {module!r}; install it (pip install {module})"
    if isinstance(err, expected):
        return one_line(err)
    return None


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """`warnings.formatwarning` for the CLIs: one line, without the source line Python adds by default.

    The project's own warnings are written for users and stand alone; a third-party warning keeps its
    category and origin so it can be traced."""
    origin = str(filename).replace("\\", "/")
    if any(f"/{package}/" in origin for package in _PROJECT_PACKAGES):
        return f"warning: {message}\n"
    return f"warning: {message} ({category.__name__}, {filename}:{lineno})\n"


class CommandGroup(click.Group):
    """A click group that prints the expected errors of its commands as one line (see the module docstring).

    The group's callback must take the `debug_option` flag."""

    def expected_errors(self) -> tuple[type[BaseException], ...]:
        return data_errors()

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug"))
        previous = warnings.formatwarning
        if not debug:
            warnings.formatwarning = one_line_warning
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):  # click's own: it prints them
            raise
        except Exception as err:
            if debug:
                raise
            message = expected_message(err, self.expected_errors())
            if message is None:
                click.echo(f"internal error ({type(err).__name__}): a bug in MPT, not a problem with your input; "
                           "the traceback follows, please report it", err=True)
                raise
            raise click.ClickException(message) from err
        finally:
            warnings.formatwarning = previous
