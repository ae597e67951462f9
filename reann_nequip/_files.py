"""Writing output files so that nothing is lost: the final name holds the old file or the complete
new one, never a part, and an output never overwrites an input.

Light on purpose (standard library only): the command-line tools use it before importing torch.
"""

import contextlib
import io
import os
import shutil
import uuid
from typing import IO, Iterator, Sequence, Union

PathLike = Union[str, os.PathLike]


class OutputPathError(ValueError):
    """An output path that cannot be written, or that names one of the inputs."""


def check_output_path(path: PathLike, inputs: Sequence[PathLike] = ()) -> None:
    """Raise :class:`OutputPathError` unless ``path`` can be written without harm: its directory
    exists and is writable, it is neither a directory nor a read-only file, and it is none of
    ``inputs`` (under any name: symbolic or hard links count)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OutputPathError(f"cannot write `{path}`: the directory `{directory}` does not exist")
    if not os.access(directory, os.W_OK):
        raise OutputPathError(f"cannot write `{path}`: the directory `{directory}` is read-only")
    if os.path.isdir(path):
        raise OutputPathError(f"cannot write `{path}`: it is a directory")
    # the rename would replace a write-protected file, which open() refuses
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise OutputPathError(f"cannot write `{path}`: the file is read-only")
    for source in inputs:
        if os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise OutputPathError(
                f"the output `{path}` is the input `{os.fspath(source)}`: writing it would "
                "destroy the input; choose another output path"
            )


@contextlib.contextmanager
def atomic_output(
    path: PathLike, mode: str = "w", inputs: Sequence[PathLike] = (), append: bool = False
) -> Iterator[IO]:
    """A file to write ``path`` through: a temporary file in the same directory, flushed, fsynced
    and renamed over ``path`` when the ``with`` block ends, removed if the block raises (or the
    process is killed: then only a hidden ``.<name>.*.tmp`` file is left beside ``path``).

    Args:
        path: the file to write (replaced if it exists, keeping its permissions)
        mode: ``"w"`` (UTF-8 text) or ``"wb"`` (default ``"w"``)
        inputs: files that ``path`` must not be (checked first, see :func:`check_output_path`)
        append: start from a copy of the existing file, for logs that grow (default ``False``)

    Raises:
        OutputPathError: the directory is missing or read-only, or ``path`` is an input
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"`mode` must be 'w' or 'wb', found {mode!r}")
    path = os.fspath(path)
    check_output_path(path, inputs)
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(
        directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    )
    try:
        # 0o666 less the umask, as open() gives a new file
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise OutputPathError(
            f"cannot write `{path}`: {error.strerror} (creating a file in `{directory}`)"
        ) from error
    try:
        with os.fdopen(descriptor, "wb") as raw:
            if append and os.path.exists(path):
                with open(path, "rb") as existing:
                    shutil.copyfileobj(existing, raw)
            stream = raw if mode == "wb" else io.TextIOWrapper(raw, encoding="utf-8")
            yield stream
            stream.flush()
            if stream is not raw:
                stream.detach()  # leaves `raw` open for the fsync
            os.fsync(raw.fileno())
        if os.path.exists(path):
            shutil.copymode(path, temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    # the rename itself survives a power cut only once the directory is synced
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)
