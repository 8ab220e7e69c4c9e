"""tools/demo.py's inputs and output names (engine.visualize)."""
from pathlib import Path

import pytest

from engine.visualize import expand_inputs, output_paths


def test_every_input_gets_its_own_picture(tmp_path: Path) -> None:
    """Folders keep their inner paths; names that would repeat get -2, -3 (before: one
    picture overwrote the others and the count of files written said otherwise)."""
    for name in ["cam1/img.jpg", "cam2/img.jpg", "cam2/img.jpeg", "cam2/img.PNG", "a.mp4",
                 "notes.txt", "other/img.jpg", "cam2/._img.jpg", "cam2/.thumbs/img.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    inputs = list(expand_inputs([str(tmp_path / "cam1"), str(tmp_path / "cam2"),
                                 str(tmp_path / "other/img.jpg"), str(tmp_path / "a.mp4")]))
    assert [(p.relative_to(tmp_path).as_posix(), n.as_posix()) for p, n in inputs] == [
        ("cam1/img.jpg", "img.jpg"), ("cam2/img.PNG", "img.PNG"), ("cam2/img.jpeg", "img.jpeg"),
        ("cam2/img.jpg", "img.jpg"), ("other/img.jpg", "img.jpg"), ("a.mp4", "a.mp4")]
    out = tmp_path / "out"
    assert [p.relative_to(out).as_posix() for p in output_paths(inputs, out)] == [
        "img.jpg", "img.png", "img-2.jpg", "img-3.jpg", "img-4.jpg", "a.mp4"]
    nested = list(expand_inputs([str(tmp_path)]))
    names = [p.relative_to(out).as_posix() for p in output_paths(nested, out)]
    assert "cam1/img.jpg" in names and "cam2/img.jpg" in names and "cam2/img-2.jpg" in names
    assert len(set(names)) == len(names) == 6
    cam2 = list(expand_inputs([str(tmp_path / "cam2")]))
    in_place = output_paths(cam2, tmp_path / "cam2")  # the inputs are never written over
    assert [p.relative_to(tmp_path).as_posix() for p in in_place] == [
        "cam2/img.png", "cam2/img-2.jpg", "cam2/img-3.jpg"]
    with pytest.raises(FileNotFoundError, match="input not found: .*missing.jpg"):
        list(expand_inputs([str(tmp_path / "missing.jpg")]))
