"""The rules a template spec passes before anything is built (pure logic)."""

from __future__ import annotations

import pytest

from cellbox.errors import ApiError
from cellbox.templates.spec import cell_path, check_files, check_packages, check_user


@pytest.mark.parametrize("spec", [
    "requests", "requests==2.32.3", "pandas>=2,<3", "uvicorn[standard]~=0.30", "black; python_version >= '3.8'",
    "zope.interface", "foo_bar-baz===1.0",
])
def test_pip_requirement_specifiers_are_accepted(spec: str) -> None:
    assert check_packages("python3", [spec]) == [spec]


@pytest.mark.parametrize("spec", [
    "-r requirements.txt", "--extra-index-url=http://x", "git+https://github.com/a/b", "https://x/y.whl",
    "../pkg", "/abs/pkg.whl", "pkg @ https://x/pkg.whl", "pkg==1 --hash=sha256:00", "C:\\pkg",
])
def test_pip_urls_paths_and_options_are_refused(spec: str) -> None:
    with pytest.raises(ApiError) as raised:
        check_packages("python3", [spec])
    assert repr(spec.strip()) in raised.value.error or "option" in raised.value.error


@pytest.mark.parametrize("spec", ["lodash", "lodash@4.17.21", "@types/node@^20", "react@latest", "left-pad@>=1 <2"])
def test_npm_names_with_versions_are_accepted(spec: str) -> None:
    assert check_packages("javascript", [spec]) == [spec]


@pytest.mark.parametrize("spec", ["github:a/b", "file:../x", "git+ssh://git@x/y", "https://x/y.tgz", "a/b", "--save"])
def test_npm_urls_paths_and_options_are_refused(spec: str) -> None:
    with pytest.raises(ApiError):
        check_packages("javascript", [spec])


def test_file_paths_land_in_the_cells_writable_trees() -> None:
    assert cell_path("app/x.py", "files") == "/data/app/x.py"
    assert cell_path("/home/user/.bashrc", "files") == "/home/user/.bashrc"
    for outside in ("../etc/passwd", "/data/../etc/x", "/opt/template/x", "/datax/y"):
        with pytest.raises(ApiError):
            cell_path(outside, "files")


def test_a_later_file_of_the_same_path_wins() -> None:
    entries = check_files([{"path": "a", "content": "1"}, {"path": "/data/a", "content": "2"}], 1000)
    assert [(e.path, e.data) for e in entries] == [("/data/a", b"2")]


def test_files_above_the_size_cap_are_refused() -> None:
    with pytest.raises(ApiError, match="bytes in all"):
        check_files([{"path": "a", "content": "x" * 11}], 10)


@pytest.mark.parametrize("user, result", [(None, "user"), ("user", "user"), ("sandbox", "sandbox"), ("app_1", "app_1")])
def test_users_that_name_the_cell_user_are_accepted(user: str | None, result: str) -> None:
    assert check_user(user) == result


@pytest.mark.parametrize("user", ["root", "0", "1000:1000", "Admin", "nobody", "a b"])
def test_users_that_cannot_be_honoured_are_refused(user: str) -> None:
    with pytest.raises(ApiError, match="cannot be honoured"):
        check_user(user)


def test_a_file_cannot_also_be_the_directory_of_another():
    import pytest

    from cellbox.errors import ApiError
    from cellbox.templates.spec import check_files

    with pytest.raises(ApiError, match="cannot also hold"):
        check_files([{"path": "a", "content": "x"}, {"path": "a/b", "content": "y"}], 1 << 20)
    with pytest.raises(ApiError, match="255 bytes"):
        check_files([{"path": "x" * 300, "content": "x"}], 1 << 20)
