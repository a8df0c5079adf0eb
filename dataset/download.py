"""Fetches and unpacks a dataset tarball (MedNIST by default), checked by md5.

Usage:
  python -m dataset.download --url=file:///data/MedNIST.tar.gz --output_dir=/data/mednist

The URL may be http(s):// or file:// (or a plain local path). The archive is
downloaded next to the output under a temporary name, checked, and only then
extracted; extraction goes to a temporary folder renamed into place, so an
interrupted run leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.parse
import urllib.request
from pathlib import Path

from absl import app, flags

from official.utils import cli

# The MedNIST archive that MONAI's tutorials download (Project-MONAI
# MONAI-extra-test-data release 0.8.1), with its published md5.
MEDNIST_URL = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
               "0.8.1/MedNIST.tar.gz")
MEDNIST_MD5 = "0bc7306e7427e00ad1c5526a6677552d"


PROGRAM = "download.py"
FLAGS = cli.program_flags()
flags.DEFINE_string("url", None, "archive URL (http(s)://, file://) or local path "
                    "(default: $MEDNIST_URL, else the public MedNIST.tar.gz)", flag_values=FLAGS)
flags.DEFINE_string("md5", MEDNIST_MD5, "expected md5 of the archive; 'none' skips the check "
                    "(default: the public MedNIST.tar.gz's md5)", flag_values=FLAGS)
flags.DEFINE_string("output_dir", None, "folder to extract into", flag_values=FLAGS)
flags.mark_flag_as_required("output_dir", flag_values=FLAGS)
parse_flags = cli.flags_parser(PROGRAM, FLAGS, doc=__doc__)


class DownloadError(RuntimeError):
    """A download or check failed; the message names the URL or file."""


def _as_url(source: str) -> str:
    if "://" in source:
        return source
    return Path(source).resolve().as_uri()


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(source: str, destination: Path, *, md5: str | None) -> Path:
    """Copies ``source`` (URL or path) to ``destination`` and checks its md5.

    Raises:
      DownloadError: unreachable source, or an md5 that differs from ``md5``.
    """
    url = _as_url(source)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except (OSError, ValueError) as error:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url}: cannot download ({error})") from error
    if md5 is not None:
        actual = md5_of(partial)
        if actual != md5.lower():
            partial.unlink()
            raise DownloadError(f"{url}: md5 mismatch (expected {md5}, got {actual}); "
                                "the file is corrupt or not the expected archive")
    os.replace(partial, destination)
    return destination


def extract(archive: Path, output_dir: Path) -> Path:
    """Extracts a .tar.gz into ``output_dir`` atomically; refuses unsafe member paths."""
    if output_dir.exists():
        raise DownloadError(f"{output_dir}: already exists; remove it or choose another folder")
    staging = output_dir.with_name(output_dir.name + ".extracting")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            # The "data" filter rejects absolute paths, '..' and device files.
            tar.extractall(staging, filter="data")
    except (tarfile.TarError, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(f"{archive}: cannot extract ({error})") from error
    os.replace(staging, output_dir)
    return output_dir


def main(argv: list[str]) -> None:
    del argv  # no positional arguments (parse_flags checked)
    output_dir = Path(FLAGS.output_dir)
    archive = output_dir.with_name(output_dir.name + ".tar.gz")
    md5 = None if FLAGS.md5.lower() == "none" else FLAGS.md5
    try:
        if not archive.exists() or (md5 and md5_of(archive) != md5):
            fetch(FLAGS.url or os.environ.get("MEDNIST_URL", MEDNIST_URL), archive, md5=md5)
        extract(archive, output_dir)
    except DownloadError as error:
        cli.exit_with_error(PROGRAM, error)
    print(f"extracted {archive} into {output_dir}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
