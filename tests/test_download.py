"""dataset.download against local file:// archives (no network in tests)."""

import hashlib
import io
import tarfile

import pytest

from dataset import download


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
    assert not out.exists() and not list(tmp_path.glob("mednist*"))


def test_flags_default_to_mednist_and_a_missing_output_dir_is_a_flag_error(capsys):
    download.parse_flags(["download.py", "--output_dir=x"])
    assert download.FLAGS.url is None and download.FLAGS.md5 == download.MEDNIST_MD5
    with pytest.raises(SystemExit) as exit_info:
        download.parse_flags(["download.py"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.splitlines()
    assert len(error) == 1 and "download.py: error: " in error[0] and "output_dir" in error[0]


def test_unreachable_source(tmp_path):
    with pytest.raises(download.DownloadError, match="cannot download"):
        download.fetch(str(tmp_path / "absent.tar.gz"), tmp_path / "x.tar.gz", md5=None)


def test_unsafe_member_is_refused(tmp_path):
    _tarball(tmp_path / "evil.tar.gz", {"../escape.txt": b"x"})
    with pytest.raises(download.DownloadError, match="cannot extract"):
        download.extract(tmp_path / "evil.tar.gz", tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()

