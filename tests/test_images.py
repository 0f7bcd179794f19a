"""discover: which files a run reads, in what order, under what output names; inputs that give
no image fail on their own."""

from __future__ import annotations

import io
import os
from pathlib import Path, PurePath

import pytest

from featviz.errors import UsageError
from featviz.inputs.discover import ImageSource, discover
from featviz.inputs.printable import printable


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative arguments, as a user types them, so that messages can be pinned exactly."""
    monkeypatch.chdir(tmp_path)


def make(*names: str) -> None:
    """Create files (a name ending in / is a folder); contents do not matter to discovery."""
    for name in names:
        path = Path(name)
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not decoded here")


def found(inputs: list[str], **kwargs: object) -> list[tuple[str, str]]:
    """(path, relative) of every image discovered, in order."""
    sources = discover(inputs, **kwargs)  # type: ignore[arg-type]
    return [(str(s.path), str(s.relative)) for s in sources if s.problem is None]


def problems(inputs: list[str], **kwargs: object) -> list[tuple[str, str]]:
    """(display, problem) of every input that gave no image, in order."""
    sources = discover(inputs, **kwargs)  # type: ignore[arg-type]
    return [(s.display, s.problem) for s in sources if s.problem is not None]


def usage_error(inputs: list[str], **kwargs: object) -> UsageError:
    with pytest.raises(UsageError) as caught:
        discover(inputs, **kwargs)  # type: ignore[arg-type]
    return caught.value


# --- folders ----------------------------------------------------------------------------------


def test_folder_takes_images_of_any_case_sorted_and_skips_the_rest() -> None:
    make(
        "photos/b.JPG", "photos/a.png", "photos/c.Jpeg", "photos/d.webp", "photos/e.TIFF",
        "photos/f.tif", "photos/g.bmp", "photos/h.gif", "photos/notes.txt", "photos/README",
        "photos/.hidden.jpg", "photos/.cache/x.jpg", "photos/sub/deep.jpg",
    )  # fmt: skip
    assert found(["photos"]) == [
        ("photos/a.png", "a"),
        ("photos/b.JPG", "b"),
        ("photos/c.Jpeg", "c"),
        ("photos/d.webp", "d"),
        ("photos/e.TIFF", "e"),
        ("photos/f.tif", "f"),
        ("photos/g.bmp", "g"),
        ("photos/h.gif", "h"),
    ]


def test_recursive_mirrors_sub_folders_in_depth_first_name_order() -> None:
    make("photos/z.jpg", "photos/a/cat.jpg", "photos/b/cat.jpg", "photos/a/x/y.png")
    make("photos/.git/objects/blob.png", "photos/b/.thumbs/cat.jpg")
    assert found(["photos"], recursive=True) == [
        ("photos/a/cat.jpg", "a/cat"),
        ("photos/a/x/y.png", "a/x/y"),
        ("photos/b/cat.jpg", "b/cat"),
        ("photos/z.jpg", "z"),
    ]


def test_folder_without_images_suggests_recursive_when_sub_folders_have_some() -> None:
    make("photos/notes.txt", "photos/2024/june/beach.jpg")
    assert problems(["photos"]) == [
        ("photos", "has no image files (it has sub-folders: add --recursive)")
    ]
    assert found(["photos"], recursive=True) == [("photos/2024/june/beach.jpg", "2024/june/beach")]


@pytest.mark.parametrize("recursive", [False, True])
def test_folder_without_any_images(recursive: bool) -> None:
    make("docs/notes.txt", "docs/sub/more.md", "docs/.hidden.png")
    assert problems(["docs"], recursive=recursive) == [
        (
            "docs",
            "has no image files (featviz looks for .bmp .gif .jpeg .jpg .png .tif .tiff .webp "
            "files, any case)",
        )
    ]


def test_folder_entries_are_judged_by_what_they_are() -> None:
    make("photos/x.jpg/inside.png", "photos/real.png")
    Path("photos/gone.jpg").symlink_to("nowhere.jpg")
    os.mkfifo("photos/pipe.png")
    # Without --recursive, the folder called x.jpg is a sub-folder like any other.
    assert found(["photos"]) == [
        ("photos/gone.jpg", "gone"),
        ("photos/pipe.png", "pipe"),
        ("photos/real.png", "real"),
    ]
    assert ("photos/x.jpg/inside.png", "x.jpg/inside") in found(["photos"], recursive=True)


def test_symlinked_folders_are_followed_but_loops_are_not() -> None:
    make("photos/a.jpg", "elsewhere/b.jpg")
    Path("photos/loop").symlink_to("..", target_is_directory=True)  # back up to the parent
    Path("photos/self").symlink_to(".", target_is_directory=True)
    Path("photos/linked").symlink_to("../elsewhere", target_is_directory=True)
    assert found(["photos"], recursive=True) == [
        ("photos/a.jpg", "a"),
        ("photos/linked/b.jpg", "linked/b"),
        ("photos/loop/elsewhere/b.jpg", "loop/elsewhere/b"),
    ]


def test_unreadable_folder_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    make("locked/a.jpg")
    real_scandir = os.scandir

    def deny(path: object = ".") -> object:
        if os.fspath(path) == "locked":  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", deny)
    assert problems(["locked"]) == [("locked", "cannot be read (permission denied)")]


def test_unreadable_sub_folder_is_yielded_for_decode_to_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make("photos/a.jpg", "photos/locked/b.jpg")
    real_scandir = os.scandir

    def deny(path: object = ".") -> object:
        if os.fspath(path) == "photos/locked":  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", deny)
    assert found(["photos"], recursive=True) == [
        ("photos/a.jpg", "a"),
        ("photos/locked", "locked"),
    ]


# --- explicit files, patterns, stdin ------------------------------------------------------------


def test_named_files_are_taken_whatever_their_extension() -> None:
    make("scan.dat", "photos/cat.jpg", "notes.txt")
    assert found(["scan.dat", "photos/cat.jpg", "notes.txt"]) == [
        ("scan.dat", "scan"),
        ("photos/cat.jpg", "cat"),
        ("notes.txt", "notes"),
    ]


def test_arguments_keep_their_order_and_a_file_met_twice_is_yielded_once() -> None:
    make("b/1.png", "b/2.png", "a.png")
    assert found(["b", "a.png", "./b/2.png", "b/../a.png"]) == [
        ("b/1.png", "1"),
        ("b/2.png", "2"),
        ("a.png", "a"),
    ]


def test_patterns() -> None:
    make("photos/a.jpg", "photos/b.JPG", "photos/c.png", "photos/notes.txt", "photos/.h.jpg")
    make("photos/sub/d.jpg", "photos/sub/deeper/e.jpg", "photos/dir.jpg/f.png")
    # patterns match case as written
    assert found(["photos/*.jpg"]) == [("photos/a.jpg", "a")]
    assert found(["photos/*"]) == [
        ("photos/a.jpg", "a"),
        ("photos/b.JPG", "b"),
        ("photos/c.png", "c"),
    ]
    # ** spans any depth, with or without --recursive, and outputs mirror what it spanned.
    assert found(["photos/**/*.jpg"]) == [
        ("photos/a.jpg", "a"),
        ("photos/sub/d.jpg", "sub/d"),
        ("photos/sub/deeper/e.jpg", "sub/deeper/e"),
    ]
    assert found(["*/s?b/*.jpg"]) == [("photos/sub/d.jpg", "photos/sub/d")]


def test_pattern_matching_nothing_or_no_image() -> None:
    make("photos/notes.txt")
    assert problems(["photos/*.jpg", "photos/*"]) == [
        ("photos/*.jpg", "no file or folder matches this pattern"),
        (
            "photos/*",
            "matches no image files (featviz looks for .bmp .gif .jpeg .jpg .png .tif .tiff "
            ".webp files, any case)",
        ),
    ]


def test_a_path_that_exists_is_not_read_as_a_pattern() -> None:
    make("a[1].jpg", "a1.jpg")
    assert found(["a[1].jpg"]) == [("a[1].jpg", "a[1]")]


def test_pattern_outputs_stay_inside_the_output_folder() -> None:
    make("a/x/up.jpg", "a/b.jpg")
    assert found(["a/*/../b.jpg"]) == [("a/x/../b.jpg", "b")]


def test_stdin_paths_are_streamed_and_not_validated() -> None:
    stream = io.StringIO("photos/cat.jpg\r\n\nmissing.png\nfolder\n")
    make("photos/cat.jpg", "folder/")
    sources = discover(["-"], stdin=stream)
    first = next(sources)
    assert (str(first.path), str(first.relative)) == ("photos/cat.jpg", "cat")
    assert stream.tell() == len("photos/cat.jpg\r\n"), "stdin is read one line at a time"
    # Missing paths and folders are decode's to report, file by file.
    assert [str(source.path) for source in sources] == ["missing.png", "folder"]


@pytest.mark.parametrize("wrap", [False, True])
def test_stdin_bytes_keep_names_that_are_not_utf8(wrap: bool) -> None:
    name = b"caf\xe9.png"
    stream: io.IOBase = io.BytesIO(name + b"\n")
    if wrap:  # like sys.stdin, whose strict UTF-8 decoding would fail on this name
        stream = io.TextIOWrapper(stream, encoding="utf-8", errors="strict")
    (source,) = discover(["-"], stdin=stream)  # type: ignore[arg-type]
    assert source.path == Path(os.fsdecode(name))
    assert source.display == "caf\\xe9.png"


def test_relatives_never_lead_outside_the_output_folder() -> None:
    stream = io.StringIO(".\n..\n/\n..jpg\n")
    relatives = [str(source.relative) for source in discover(["-"], stdin=stream)]
    assert relatives == ["_", "_-2", "_-3", "..jpg"]


# --- output names -----------------------------------------------------------------------------


def test_collisions_get_numbered_suffixes_in_the_order_met() -> None:
    make("x/cat.jpg", "y/cat.jpg", "z/cat.png", "w/cat.jpg")
    assert [r for _, r in found(["x/cat.jpg", "y/cat.jpg", "z/cat.png", "w/cat.jpg"])] == [
        "cat",
        "cat-2",
        "cat-3",
        "cat-4",
    ]


def test_no_image_folder_is_inside_another_images_folder() -> None:
    """An image ``a.png`` beside a folder ``a/`` of images: the folder's images move aside, all
    of them alike, so that featviz's names in a's folder (cam, maps, compare.png) never meet
    theirs; met the other way round, the image moves aside."""
    make("a.png", "d/a/compare.png.png", "d/a/cam.png", "d/b.png")
    assert found(["a.png", "d"], recursive=True) == [
        ("a.png", "a"),
        ("d/a/cam.png", "a-2/cam"),
        ("d/a/compare.png.png", "a-2/compare.png"),
        ("d/b.png", "b"),
    ]
    make("e/x/y.png", "x.png")
    assert found(["e", "x.png"], recursive=True) == [("e/x/y.png", "x/y"), ("x.png", "x-2")]


def test_collisions_ignore_case_and_do_not_reuse_existing_names() -> None:
    make("f/Cat.bmp", "f/cat-2.gif", "f/cat.jpg", "f/cat.png", "f/sub/cat.jpg")
    # Code-point order: "C" < "c", "-" < "." < "s".
    assert found(["f"], recursive=True) == [
        ("f/Cat.bmp", "Cat"),
        ("f/cat-2.gif", "cat-2"),
        ("f/cat.jpg", "cat-3"),
        ("f/cat.png", "cat-4"),
        ("f/sub/cat.jpg", "sub/cat"),
    ]


def test_awkward_names_are_displayed_printably_and_their_outputs_are_writable(
    tmp_path: Path,
) -> None:
    names = ["with spaces.jpg", "café.jpg", "猫.png", os.fsdecode(b"caf\xe9.png"), "tab\there.png"]
    make(*(f"photos/{name}" for name in names))
    sources = {s.relative.name: s for s in discover(["photos"])}
    assert sources["caf\udce9"].display == "photos/caf\\xe9.png"
    assert sources["tab\there"].display == "photos/tab\\x09here.png"
    assert sources["猫"].display == "photos/猫.png"
    for source in sources.values():
        source.display.encode("utf-8")  # printable and JSON-safe
        output = tmp_path / "out" / source.relative.with_suffix(".png")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"")
    assert (tmp_path / "out" / os.fsdecode(b"caf\xe9.png")).exists()


def test_printable() -> None:
    assert printable("a\nb\x1b[31m") == "a\\x0ab\\x1b[31m"
    assert printable("evil\u202egpj.exe") == "evil\\u202egpj.exe"
    assert printable("\ud800") == "\\ud800"  # a lone surrogate that no file system gave us


# --- inputs that give no image fail alone; usage errors ----------------------------------------


def test_missing_input_suggests_a_close_name() -> None:
    make("photos/cat.jpg", "photos/dog.jpg")
    assert problems(["photos/cta.jpg", "nowhere/x.jpg"]) == [
        ("photos/cta.jpg", "does not exist (closest: 'photos/cat.jpg')"),
        ("nowhere/x.jpg", "does not exist"),
    ]


def test_broken_symlink_argument() -> None:
    Path("link.jpg").symlink_to("gone.jpg")
    assert problems(["link.jpg"]) == [
        ("link.jpg", "does not exist (broken symbolic link to 'gone.jpg')")
    ]


def test_an_input_that_gives_no_image_takes_its_place_and_the_rest_go_on() -> None:
    make("photos/a.jpg", "b.png")
    sources = list(discover(["photos", "photos/typo.jpg", "b.png"]))
    assert [(s.display, s.index, s.problem) for s in sources] == [
        ("photos/a.jpg", 0, None),
        ("photos/typo.jpg", 1, "does not exist (closest: 'photos/a.jpg')"),
        ("b.png", 2, None),
    ]


def test_an_output_folder_is_never_input() -> None:
    make("in/a.png", "in/out/.featviz-output", "in/out/m/a.png/cam/x.png", "old/manifest.json")
    Path("old/manifest.json").write_text('{"versions": {"featviz": "0.1.0"}}')
    make("old/m/b.png", "in/data/manifest.json", "in/data/c.png")
    told: list[str] = []
    assert found(["in", "in/**/*.png"], recursive=True, on_skip=told.append) == [
        ("in/a.png", "a"),
        ("in/data/c.png", "data/c"),
    ]  # a manifest.json that is not featviz's is any file
    assert told == ["in/out"]
    assert problems(["old"]) == [
        ("old", "is a featviz output folder, which is never read as input")
    ]


def test_no_inputs_and_stdin_twice() -> None:
    assert usage_error([]).message == "no inputs given"
    assert usage_error(["-", "-"]).message == "'-' (read paths from stdin) is given more than once"


def test_image_source_is_frozen() -> None:
    source = ImageSource(Path("a.jpg"), PurePath("a"), "a.jpg")
    with pytest.raises(AttributeError):
        source.relative = PurePath("b")  # type: ignore[misc]
