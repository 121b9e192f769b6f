"""Bad input to `edgeslim optimize`: each case is one clear error line, exit code 1, and no output file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_optimize_graphs import const_convnet, multi_input_mlp, old_opset_model
from typer.testing import CliRunner

from edgeslim.cli import app
from edgeslim.errors import EdgeslimError
from edgeslim.onnxkit.inputs import input_specs, load_npz_feeds, parse_shapes, resolve_shape
from edgeslim.onnxkit.load import load_onnx
from edgeslim.onnxopt.run import OptimizeConfig, optimize_onnx


def _run(src: Path, out: Path, **kw) -> None:
    optimize_onnx(OptimizeConfig(model=src, out=out, samples=4, bench_seconds=0.1, **kw))


@pytest.fixture()
def mlp(tmp_path: Path) -> Path:
    return multi_input_mlp(tmp_path / "mlp.onnx")


def test_truncated_file(tmp_path: Path, mlp: Path) -> None:
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(mlp.read_bytes()[: mlp.stat().st_size // 2])
    with pytest.raises(EdgeslimError, match=r"trunc\.onnx: not a readable ONNX model"):
        _run(bad, tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_non_onnx_file(tmp_path: Path) -> None:
    for name, data in (("notes.onnx", b"hello, this is text\n" * 20), ("img.onnx", b"\x89PNG\r\n\x1a\n" + bytes(200)),
                       ("empty.onnx", b"")):
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(EdgeslimError, match=rf"{name}: (not a readable ONNX model|not an ONNX model|empty file)"):
            _run(p, tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EdgeslimError, match="no such file"):
        load_onnx(tmp_path / "nope.onnx")


def test_unsupported_opset(tmp_path: Path) -> None:
    p = old_opset_model(tmp_path / "old.onnx")
    with pytest.raises(EdgeslimError, match=r"unsupported opset 9 \(edgeslim optimize takes opsets 11 to"):
        _run(p, tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_npz_names_must_match(tmp_path: Path, mlp: Path) -> None:
    np.savez(tmp_path / "c.npz", a=np.zeros((4, 16), np.float32), c=np.zeros((4, 16), np.float32))
    with pytest.raises(EdgeslimError, match=r"c\.npz: array names must match the model inputs \(a, b\); "
                                            r"missing b; unexpected c"):
        _run(mlp, tmp_path / "o.onnx", calib=tmp_path / "c.npz")
    assert not (tmp_path / "o.onnx").exists()


def test_npz_shapes_must_match(tmp_path: Path, mlp: Path) -> None:
    np.savez(tmp_path / "c.npz", a=np.zeros((4, 16), np.float32), b=np.zeros((4, 15), np.float32))
    with pytest.raises(EdgeslimError, match=r"array 'b' has shape \(4, 15\) .* expects \[batch, 16\]"):
        _run(mlp, tmp_path / "o.onnx", calib=tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", a=np.zeros((4, 16), np.float32), b=np.zeros((3, 16), np.float32))
    with pytest.raises(EdgeslimError, match="different sample counts"):
        _run(mlp, tmp_path / "o.onnx", calib=tmp_path / "d.npz")
    assert not (tmp_path / "o.onnx").exists()


def test_npz_corrupt_or_wrong_dtype(tmp_path: Path, mlp: Path) -> None:
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    specs = input_specs(load_onnx(mlp))
    with pytest.raises(EdgeslimError, match=r"bad\.npz: not a readable \.npz file"):
        load_npz_feeds(tmp_path / "bad.npz", specs)
    np.savez(tmp_path / "s.npz", a=np.array(["x"] * 16), b=np.zeros((4, 16), np.float32))
    with pytest.raises(EdgeslimError, match="array 'a' has dtype"):
        load_npz_feeds(tmp_path / "s.npz", specs)


def test_npz_sample_layouts(tmp_path: Path, mlp: Path) -> None:
    specs = input_specs(load_onnx(mlp))
    # rank+1 arrays hold one feed per index; rank-sized arrays with a dynamic batch are split into batch 1
    np.savez(tmp_path / "c.npz", a=np.ones((3, 2, 16), np.float32), b=np.ones((3, 16), np.float32) * 2)
    feeds = load_npz_feeds(tmp_path / "c.npz", specs)
    assert len(feeds) == 3 and feeds[0]["a"].shape == (2, 16) and feeds[0]["b"].shape == (1, 16)


def test_unknown_dims_ask_for_shape(tmp_path: Path) -> None:
    src = const_convnet(tmp_path / "c.onnx", opset=13, hw="H")
    with pytest.raises(EdgeslimError, match=r"input 'x' has symbolic dimension 'H' \(axis 2 of \[N, 1, H, H\]\); "
                                            r"pass --inputs FILE.npz .* or --shape x=1,1,H,H"):
        _run(src, tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()
    _run(src, tmp_path / "o.onnx", shapes=["x=1,1,12,12"], candidates=("fp32-opt", "w8"))
    assert (tmp_path / "o.onnx").is_file()


def test_shape_option_errors(mlp: Path) -> None:
    specs = input_specs(load_onnx(mlp))
    with pytest.raises(EdgeslimError, match="model has no input 'z'"):
        parse_shapes(["z=1,16"], specs)
    with pytest.raises(EdgeslimError, match="expected NAME=D0,D1"):
        parse_shapes(["a=1,x"], specs)
    with pytest.raises(EdgeslimError, match="does not fit the model's declared shape"):
        resolve_shape(specs[0], (1, 8))


def test_cli_one_line_and_exit_code(tmp_path: Path, mlp: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    r = CliRunner().invoke(app, ["optimize", str(bad), "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code != 0 and isinstance(r.exception, EdgeslimError)
    assert "\n" not in str(r.exception) and "bad.onnx" in str(r.exception)
    assert not (tmp_path / "o.onnx").exists()
    r = CliRunner().invoke(app, ["optimize", str(mlp), "-o", str(tmp_path / "o.onnx"), "--samples", "4",
                                 "--bench-seconds", "0.1", "--candidates", "fp32-opt,w8", "--json",
                                 "--weight-min-elements", "64", "--max-slowdown", "1.0"])
    assert r.exit_code == 0, r.output
    assert '"chosen": "w8"' in r.output and (tmp_path / "o.onnx").is_file()
    r = CliRunner().invoke(app, ["optimize", str(mlp), "-o", str(tmp_path / "p.onnx"), "--candidates", "int4"])
    assert isinstance(r.exception, EdgeslimError) and "valid: fp32-opt" in str(r.exception)
