"""dataset.download against local file:// archives (no network in tests)."""

import hashlib
import io
import shutil
import tarfile

import pytest

from dataset import download
from tests.conftest import one_error_line


def _tarball(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_file_url_with_md5_extracts(tmp_path):
    md5 = _tarball(tmp_path / "src.tar.gz", {"MedNIST/Hand/0.jpeg": b"x", "MedNIST/CXR/1.jpeg": b"y"})
    out = tmp_path / "mednist"
    download.main(download.parse_flags(["download.py",
                                        f"--url={(tmp_path / 'src.tar.gz').as_uri()}",
                                        f"--md5={md5}", f"--output_dir={out}"]))
    assert (out / "MedNIST" / "Hand" / "0.jpeg").read_bytes() == b"x"


def test_wrong_md5_is_a_clear_error_and_leaves_nothing(tmp_path, capsys):
    _tarball(tmp_path / "src.tar.gz", {"a.txt": b"x"})
    out = tmp_path / "mednist"
    with pytest.raises(SystemExit) as exit_info:
        download.main(download.parse_flags(["download.py",
                                            f"--url=file://{tmp_path / 'src.tar.gz'}",
                                            "--md5=" + "0" * 32, f"--output_dir={out}"]))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("download.py: error: ")
    assert "md5 mismatch" in err[0] and "src.tar.gz" in err[0]
    assert err[0].endswith("not the expected archive (for another archive on purpose, "
                           "--md5=none skips the check)")
    assert not out.exists() and not list(tmp_path.glob("mednist*"))


def test_flags_default_to_mednist_and_a_missing_output_dir_is_a_flag_error(capsys):
    download.parse_flags(["download.py", "--output_dir=x"])
    assert download.FLAGS.url is None and download.FLAGS.md5 == download.MEDNIST_MD5
    with pytest.raises(SystemExit) as exit_info:
        download.parse_flags(["download.py"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.splitlines()
    assert len(error) == 1 and "download.py: error: " in error[0] and "output_dir" in error[0]


@pytest.mark.parametrize("stage", ["download", "extraction"])
def test_ctrl_c_leaves_no_partial_download_or_extraction(tmp_path, monkeypatch, stage):
    md5 = _tarball(tmp_path / "src.tar.gz", {"MedNIST/Hand/0.jpeg": b"x"})
    out = tmp_path / "mednist"

    def interrupt(*args, **kwargs):
        assert list(tmp_path.glob("mednist*"))  # the partial file or folder exists by now
        raise KeyboardInterrupt

    if stage == "download":
        def copy_then_interrupt(source, destination, length):
            destination.write(source.read(10))
            interrupt()
        monkeypatch.setattr(download.shutil, "copyfileobj", copy_then_interrupt)
    else:
        def extract_then_interrupt(self, path, **kwargs):
            (download.Path(path) / "MedNIST").mkdir(parents=True)
            interrupt()
        monkeypatch.setattr(tarfile.TarFile, "extractall", extract_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        download.main(download.parse_flags(["download.py",
                                            f"--url={(tmp_path / 'src.tar.gz').as_uri()}",
                                            f"--md5={md5}", f"--output_dir={out}"]))
    # Only the checked archive (and its URL) may stay: a rerun reuses it.
    left = sorted(path.name for path in tmp_path.glob("mednist*"))
    assert left == ([] if stage == "download" else ["mednist.tar.gz", "mednist.tar.gz.url"])


def test_unreachable_source(tmp_path):
    with pytest.raises(download.DownloadError, match="cannot download") as error:
        download.fetch(str(tmp_path / "absent.tar.gz"), tmp_path / "x.tar.gz", md5=None)
    assert "--url" not in str(error.value)  # a path: no network to blame
    # A server that cannot reach the internet (here: a local port nobody listens on).
    with pytest.raises(download.DownloadError, match="cannot download .*; without network "
                       "access here, fetch the archive elsewhere and give its path \\(or a "
                       "file:// URL\\) with --url$"):
        download.fetch("http://127.0.0.1:9/MedNIST.tar.gz", tmp_path / "x.tar.gz", md5=None)
    assert not list(tmp_path.glob("x.tar.gz*"))


def test_unsafe_member_is_refused(tmp_path):
    _tarball(tmp_path / "evil.tar.gz", {"../escape.txt": b"x"})
    with pytest.raises(download.DownloadError, match="cannot extract"):
        download.extract(tmp_path / "evil.tar.gz", tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()



def _download(*flags):
    download.main(download.parse_flags(["download.py", "--md5=none", *flags]))


def _download_error(capsys, *flags) -> str:
    return one_error_line(capsys, "download.py", lambda: _download(*flags))


@pytest.mark.parametrize("damage, problem", [
    (lambda data: data[:len(data) // 2], "Compressed file ended before the end-of-stream"),
    (lambda data: b"<html>not found</html>", "the archive is damaged, truncated or not a tar.gz"),
])
def test_a_bad_archive_is_deleted_so_a_rerun_with_a_good_url_works(tmp_path, capsys, damage,
                                                                   problem):
    _tarball(tmp_path / "good.tar.gz", {"MedNIST/Hand/0.jpeg": b"x" * 50_000})
    (tmp_path / "bad.tar.gz").write_bytes(damage((tmp_path / "good.tar.gz").read_bytes()))
    out = tmp_path / "work" / "raw"
    line = _download_error(capsys, f"--url={tmp_path / 'bad.tar.gz'}", f"--output_dir={out}",
                           "--top_folder=MedNIST")
    assert line.startswith(f"download.py: error: {(tmp_path / 'bad.tar.gz').as_uri()}: "
                           "cannot extract (") and problem in line
    assert line.endswith(f"; deleted its copy {out}.tar.gz")
    assert list((tmp_path / "work").iterdir()) == []  # no archive, no partial extraction
    _download(f"--url={tmp_path / 'good.tar.gz'}", f"--output_dir={out}", "--top_folder=MedNIST")
    assert (out / "MedNIST" / "Hand" / "0.jpeg").read_bytes() == b"x" * 50_000


def test_an_archive_without_the_top_folder_is_refused_and_deleted(tmp_path, capsys):
    _tarball(tmp_path / "other.tar.gz", {"Other/0.jpeg": b"x", "README": b"y"})
    out = tmp_path / "work" / "raw"
    line = _download_error(capsys, f"--url={tmp_path / 'other.tar.gz'}", f"--output_dir={out}",
                           "--top_folder=MedNIST")
    assert line == (f"download.py: error: {(tmp_path / 'other.tar.gz').as_uri()}: no MedNIST/ "
                    "folder at its top (found Other, README): not the expected archive; "
                    f"deleted its copy {out}.tar.gz")
    assert list((tmp_path / "work").iterdir()) == []


def test_without_md5_the_cached_archive_is_reused_only_for_its_own_url(tmp_path):
    _tarball(tmp_path / "a.tar.gz", {"MedNIST/a.jpeg": b"a"})
    _tarball(tmp_path / "b.tar.gz", {"MedNIST/b.jpeg": b"b"})
    out = tmp_path / "work" / "raw"
    _download(f"--url={tmp_path / 'a.tar.gz'}", f"--output_dir={out}")
    recorded = (tmp_path / "work" / "raw.tar.gz.url").read_text()
    assert recorded == (tmp_path / "a.tar.gz").as_uri() + "\n"
    shutil.rmtree(out)
    _download(f"--url={tmp_path / 'b.tar.gz'}", f"--output_dir={out}")
    assert [p.name for p in (out / "MedNIST").iterdir()] == ["b.jpeg"]
    shutil.rmtree(out)
    (tmp_path / "b.tar.gz").unlink()  # the same URL again: the cached copy serves
    _download(f"--url={(tmp_path / 'b.tar.gz').as_uri()}", f"--output_dir={out}")
    assert [p.name for p in (out / "MedNIST").iterdir()] == ["b.jpeg"]
