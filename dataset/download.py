"""Fetches and unpacks a dataset tarball (MedNIST by default), checked by md5.

Usage:
  python -m dataset.download --url=file:///data/MedNIST.tar.gz --output_dir=/data/mednist

The URL may be http(s):// or file:// (or a plain local path). The archive is
downloaded next to the output under a temporary name, checked, and only then
extracted; extraction goes to a temporary folder renamed into place, so an
interrupted run leaves nothing that looks finished. The archive stays as
OUTPUT_DIR.tar.gz with its URL in OUTPUT_DIR.tar.gz.url; a rerun reuses it only
when its md5 matches --md5, or with --md5=none when it came from the same URL.
An archive that cannot be extracted (truncated, damaged, not a tar.gz, or
without --top_folder) is deleted, so the next run downloads again.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from absl import flags

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
flags.DEFINE_string("top_folder", None, "folder the archive must hold at its top (e.g. "
                    "MedNIST); an archive without it is refused", flag_values=FLAGS)
flags.mark_flag_as_required("output_dir", flag_values=FLAGS)
parse_flags = cli.flags_parser(PROGRAM, FLAGS, doc=__doc__)


class DownloadError(RuntimeError):
    """A download or check failed; the message names the URL or file."""


class BadArchiveError(DownloadError):
    """The archive itself is unusable: damaged, not a tar.gz, unsafe, or another layout."""

    def __init__(self, archive: Path, problem: str):
        super().__init__(f"{archive}: {problem}")
        self.problem = problem


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
        # An offline server (most GPU servers in a hospital): the way round it, in the error.
        hint = ("; without network access here, fetch the archive elsewhere and give its "
                "path (or a file:// URL) with --url"
                if url.startswith(("http://", "https://")) else "")
        raise DownloadError(f"{url}: cannot download ({error}){hint}") from error
    except BaseException:  # Ctrl-C: no part of a 60-MB archive left behind
        partial.unlink(missing_ok=True)
        raise
    if md5 is not None:
        actual = md5_of(partial)
        if actual != md5.lower():
            partial.unlink()
            raise DownloadError(f"{url}: md5 mismatch (expected {md5}, got {actual}); "
                                "the file is corrupt or not the expected archive (for "
                                "another archive on purpose, --md5=none skips the check)")
    os.replace(partial, destination)
    return destination


def extract(archive: Path, output_dir: Path, *, top_folder: str | None = None) -> Path:
    """Extracts a .tar.gz into ``output_dir`` atomically; refuses unsafe member paths.

    Raises:
      BadArchiveError: the archive is damaged, not a tar.gz, has unsafe members, or holds no
        ``top_folder`` at its top.
      DownloadError: ``output_dir`` exists, or extraction failed for another reason (disk full).
    """
    if output_dir.exists():
        raise DownloadError(f"{output_dir}: already exists; remove it or choose another folder")
    staging = output_dir.with_name(output_dir.name + ".extracting")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                # The "data" filter rejects absolute paths, '..' and device files.
                tar.extractall(staging, filter="data")
        # A truncated gzip stream raises EOFError and a damaged one zlib.error or
        # BadGzipFile, none of them a TarError.
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
            reason = " ".join(str(error).split()) or type(error).__name__  # one line
            raise BadArchiveError(archive, f"cannot extract ({reason}); the archive is damaged, "
                                  "truncated or not a tar.gz") from error
        except OSError as error:
            raise DownloadError(f"{archive}: cannot extract ({error})") from error
        if top_folder and not (staging / top_folder).is_dir():
            found = sorted(path.name for path in staging.iterdir()) if staging.is_dir() else []
            raise BadArchiveError(archive, f"no {top_folder}/ folder at its top (found "
                                  f"{', '.join(found[:5]) or 'nothing'}): not the expected "
                                  "archive")
    except BaseException:  # a DownloadError, or Ctrl-C mid-extraction
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.replace(staging, output_dir)
    return output_dir


def _is_reusable(archive: Path, source_file: Path, url: str, md5: str | None) -> bool:
    if not archive.exists():
        return False
    if md5:
        return md5_of(archive) == md5.lower()
    # Without an md5 only the recorded URL tells what the cached archive is.
    return source_file.is_file() and source_file.read_text().strip() == url


def main(argv: list[str]) -> None:
    del argv  # no positional arguments (parse_flags checked)
    output_dir = Path(FLAGS.output_dir)
    archive = output_dir.with_name(output_dir.name + ".tar.gz")
    source_file = archive.with_name(archive.name + ".url")
    md5 = None if FLAGS.md5.lower() == "none" else FLAGS.md5
    url = _as_url(FLAGS.url or os.environ.get("MEDNIST_URL", MEDNIST_URL))
    try:
        source = url
        if _is_reusable(archive, source_file, url, md5):
            source = str(archive)
        else:
            # Removed first: a run stopped before the new record must not vouch for the new file.
            source_file.unlink(missing_ok=True)
            fetch(url, archive, md5=md5)
            source_file.write_text(url + "\n")
        try:
            extract(archive, output_dir, top_folder=FLAGS.top_folder)
        except BadArchiveError as error:
            # Kept, a bad archive would be reused by every rerun, even one with a good --url.
            archive.unlink(missing_ok=True)
            source_file.unlink(missing_ok=True)
            deleted = "deleted it" if source == str(archive) else f"deleted its copy {archive}"
            raise DownloadError(f"{source}: {error.problem}; {deleted}") from error
    except DownloadError as error:
        cli.exit_with_error(PROGRAM, error)
    print(f"extracted {archive} into {output_dir}")


if __name__ == "__main__":
    cli.run_program(PROGRAM, main, parse_flags, interrupted=lambda: (
        "no partial download or extraction was left; rerun the same command"))
