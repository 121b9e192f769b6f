"""Fuzzed user data: npz task files, CSV files, image folders, calibration and transfer-set npz files.
Each either loads into something that then trains / runs, or ends in one EdgeslimError line naming the
file; never another exception, never a hang."""

from __future__ import annotations

import io
import itertools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from reliability_helpers import assert_one_line_error, assert_user_error, listing, main_inproc

from edgeslim import models
from edgeslim.data import load_task
from edgeslim.errors import EdgeslimError
from edgeslim.train import TrainConfig, evaluate
from edgeslim.train import train_model as fit

_COUNTER = itertools.count()
DTYPES = ["float32", "float64", "float16", "uint8", "int8", "int64", "bool", "complex64", "<U3", "uint16"]


def _unique(root: Path, suffix: str) -> Path:
    return root / f"f{next(_COUNTER)}{suffix}"  # a new name each time: load_task caches by file


def loads_and_trains(path: Path) -> None:
    """`path` loads as a task that a zoo MLP trains on for an epoch, or fails in one line naming it."""
    try:
        task = load_task(str(path))
    except EdgeslimError as e:
        assert_one_line_error(e, path.name)
        event("refused")
        return
    event("loaded")
    assert task.x_train.dtype == np.float32 and np.isfinite(task.x_train).all()
    assert len(task.x_train) >= 2 and len(task.x_val) >= 1 and len(task.x_test) >= 1
    assert task.num_classes >= 2 and task.y_train.min() >= 0 and task.y_test.max() < task.num_classes
    torch.manual_seed(0)
    net = models.build_model(models.make_spec("lenet300", task.input_shape, task.num_classes, h1=8, h2=4))
    try:
        fit(net, task, TrainConfig(epochs=1, batch_size=16), quiet=True)
    except EdgeslimError as e:  # e.g. values so large the loss is not finite: one line
        assert_one_line_error(e)
        return
    assert 0.0 <= evaluate(net, task.x_test, task.y_test) <= 1.0


# ------------------------------------------------------------------------------------------ npz tasks


@st.composite
def arrays(draw: st.DrawFn, n: int | None = None, labels: bool = False) -> np.ndarray:
    dtype = draw(st.sampled_from(["int64", "int32", "float32"] if labels and draw(st.booleans()) else DTYPES))
    rest = draw(st.lists(st.integers(0, 5), max_size=0 if labels and draw(st.booleans()) else 4))
    shape = (draw(st.integers(0, 30)) if n is None else n, *rest)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype == "<U3":
        return rng.integers(0, 9, shape).astype(str).astype("<U3")
    a = (rng.integers(-1, 4, shape) if labels else rng.normal(0, draw(st.sampled_from([1.0, 1e30])), shape))
    a = a.astype(dtype)
    if a.dtype.kind in "fc" and a.size and draw(st.booleans()):
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return a


@st.composite
def npz_tasks(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """A valid task (20 train, 8 test samples of 1x4x4, 3 classes) with up to three things changed:
    layouts and dtypes a loader must accept, and values, keys, shapes and counts it must refuse."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    d = {"x_train": rng.random((20, 1, 4, 4), dtype=np.float32), "y_train": np.arange(20) % 3,
         "x_test": rng.random((8, 1, 4, 4), dtype=np.float32), "y_test": np.arange(8) % 3}
    if draw(st.booleans()):
        d = {"x": np.concatenate([d["x_train"], d["x_test"]]), "y": np.concatenate([d["y_train"], d["y_test"]])}
    xs = [k for k in d if k.startswith("x")]
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(d) or ["x"]))
        kind = draw(st.sampled_from(["dtype", "layout", "nan", "huge", "labels", "array", "drop", "rename", "count"]))
        if kind == "dtype":  # the same values in another dtype, every input array alike
            dt = draw(st.sampled_from(DTYPES))
            for k in xs:
                if k in d:
                    d[k] = (d[k] * 255).astype(dt) if dt == "uint8" else d[k].astype(dt)
        elif kind == "layout":  # NHWC or (N, H, W): layouts users' files come in
            how = draw(st.sampled_from(["nhwc", "nhw", "flat"]))
            for k in xs:
                if k in d and d[k].ndim == 4:
                    d[k] = {"nhwc": d[k].transpose(0, 2, 3, 1), "nhw": d[k][:, 0],
                            "flat": d[k].reshape(len(d[k]), 16)}[how]
        elif kind == "nan" and key in xs and d[key].size and d[key].dtype.kind in "fc":
            d[key].flat[draw(st.integers(0, d[key].size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        elif kind == "huge" and key in xs and d[key].dtype.kind == "f":
            d[key] = d[key] * np.float32(1e30)
        elif kind == "labels" and key in d:
            d[key] = draw(arrays(n=len(d[key]), labels=True))
        elif kind == "array":
            d[key] = draw(arrays())
        elif kind == "drop":
            d.pop(key, None)
        elif kind == "rename" and key in d:
            d[draw(st.sampled_from(["X", "x_val", "labels", "", "y"]))] = d.pop(key)
        elif kind == "count" and key in d:
            d[key] = d[key][: draw(st.integers(0, 3))]
    return d


@settings(max_examples=120)
@given(npz_tasks())
def test_fuzzed_npz_tasks(tmp_path: Path, arrays_: dict) -> None:
    p = _unique(tmp_path, ".npz")
    np.savez(p, **arrays_)
    loads_and_trains(p)


@settings(max_examples=30)
@given(st.binary(max_size=400), st.booleans())
def test_corrupt_npz_files(tmp_path: Path, junk: bytes, truncate: bool) -> None:
    p = _unique(tmp_path, ".npz")
    if truncate:  # a real npz cut short
        buf = io.BytesIO()
        np.savez(buf, x=np.zeros((10, 4), np.float32), y=np.arange(10) % 2)
        p.write_bytes(buf.getvalue()[: len(junk) % len(buf.getvalue())])
    else:
        p.write_bytes(junk)
    loads_and_trains(p)


# ----------------------------------------------------------------------------------------------- CSV

cells = st.one_of(st.integers(-5, 5).map(str), st.floats(-1e3, 1e3, allow_nan=False).map(lambda f: f"{f:.3g}"),
                  st.sampled_from(["", "abc", "nan", "inf", "-inf", "1e999", " 2 ", "0x10", "1,5", '"q"']))


@st.composite
def csv_files(draw: st.DrawFn) -> str:
    n_feat = draw(st.integers(0, 4))
    label = draw(st.sampled_from(["label", "class", "target", "y", "name", None]))
    header = [f"f{i}" for i in range(n_feat)] + ([label] if label else [])
    rows = []
    for i in range(draw(st.integers(0, 24))):
        clean = [f"{(i * 7 + j) % 5 / 5:.2f}" for j in range(n_feat)] + ([str(i % 3)] if label else [])
        if draw(st.integers(0, 9)) == 0:  # now and then a broken row
            clean = draw(st.lists(cells, max_size=len(header) + 1))
        rows.append(",".join(clean))
    bom = "\ufeff" if draw(st.booleans()) else ""
    return bom + "\n".join([",".join(header), *rows]) + "\n"


@settings(max_examples=100)
@given(csv_files())
def test_fuzzed_csv_tasks(tmp_path: Path, text: str) -> None:
    p = _unique(tmp_path, ".csv")
    p.write_text(text, encoding="utf-8")
    loads_and_trains(p)


def test_csv_edge_cases(tmp_path: Path) -> None:
    good = "f0,f1,label\n" + "".join(f"{i % 4},{i % 3},{i % 2}\n" for i in range(20))
    p = tmp_path / "excel.csv"
    p.write_text("\ufeff" + good, encoding="utf-8")  # a byte-order mark (Excel's UTF-8 CSV) is fine
    assert load_task(str(p)).num_classes == 2
    for name, text, needle in [("nolabel.csv", good.replace("label", "other"), "no label column"),
                               ("text.csv", good.replace("1,2,", "a,2,", 1), "non-numeric"),
                               ("latin1.csv", None, "cannot read")]:
        q = tmp_path / name
        if text is None:
            q.write_bytes(good.encode() + b"\xe9\xff,1,0\n")
        else:
            q.write_text(text)
        with pytest.raises(EdgeslimError, match=needle) as e:
            load_task(str(q))
        assert_one_line_error(e.value, name)


# ------------------------------------------------------------------------------------- image folders


def _png(size: tuple[int, int], mode: str, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


@st.composite
def image_folders(draw: st.DrawFn) -> dict[str, dict[str, bytes | None]]:
    """{class: {file: bytes (None: a sub-folder)}}: mostly good PNGs, some broken files."""
    folders: dict[str, dict[str, bytes | None]] = {}
    for c in range(draw(st.sampled_from([0, 1, 2, 2, 3, 3]))):
        files: dict[str, bytes | None] = {}
        for i in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["png"] * 20 + ["empty", "junk", "cut", "dir", "txt"]))
            size = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
            png = _png(size, draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16"])), draw(st.integers(0, 99)))
            files[f"i{i}.png" if kind != "txt" else f"i{i}.txt"] = {
                "png": png, "empty": b"", "junk": draw(st.binary(min_size=1, max_size=40)),
                "cut": png[: len(png) // 2], "dir": None, "txt": b"notes"}[kind]
        folders[f"class{c}"] = files
    return folders


@settings(max_examples=60)
@given(image_folders())
def test_fuzzed_image_folders(tmp_path: Path, spec: dict) -> None:
    root = _unique(tmp_path, "")
    root.mkdir()
    for c, files in spec.items():
        (root / c).mkdir()
        for name, data in files.items():
            if data is None:
                (root / c / name).mkdir()
            else:
                (root / c / name).write_bytes(data)
    loads_and_trains(root)


def test_decompression_bomb_is_one_line(tmp_path: Path) -> None:
    """A PNG whose header claims 60000x60000 pixels: refused by its header, nothing allocated."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        (tmp_path / "imgs" / c / "x.png").write_bytes(_png((4, 4), "L", 0))
    (tmp_path / "imgs" / "b" / "bomb.png").write_bytes(bomb)
    with pytest.raises(EdgeslimError) as e:
        load_task(str(tmp_path / "imgs"))
    assert_one_line_error(e.value, "bomb.png")


# --------------------------------------------------------------------- calibration and transfer files


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeslim.deploy.export import export_onnx

    torch.manual_seed(0)
    net = models.build_model(models.make_spec("lenet5", (1, 8, 8), 4))
    p = tmp_path_factory.mktemp("calib") / "model.onnx"
    export_onnx(net, (1, 8, 8), p)
    return p


@st.composite
def calib_files(draw: st.DrawFn) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    d: dict[str, np.ndarray] = {"input": rng.random((6, 1, 1, 8, 8), dtype=np.float32)}
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["array", "shape", "rename", "extra", "nan", "dtype"]))
        if kind == "array":
            d["input"] = draw(arrays())
        elif kind == "shape":
            d["input"] = rng.random(draw(st.sampled_from([(6, 1, 8, 8), (1, 8, 8), (6, 8, 8), (6, 1, 1, 8, 9),
                                                          (0, 1, 1, 8, 8), (1, 1, 8, 8)])), dtype=np.float32)
        elif kind == "rename":
            d = {draw(st.sampled_from(["x", "Input", "data"])): v for v in d.values()}
        elif kind == "extra":
            d["state"] = rng.random((6, 2), dtype=np.float32)
        elif kind == "nan" and "input" in d and d["input"].size and d["input"].dtype.kind == "f":
            d["input"].flat[0] = np.nan
        elif kind == "dtype" and "input" in d:
            d["input"] = d["input"].astype(draw(st.sampled_from(DTYPES)))
    return d


@settings(max_examples=80)
@given(calib_files())
def test_fuzzed_calibration_files(tmp_path: Path, onnx_model: Path, arrays_: dict) -> None:
    """`optimize --calib`: the feeds either run in the model or the file is refused in one line."""
    from edgeslim.onnxkit.inputs import input_specs, load_npz_feeds
    from edgeslim.onnxkit.load import load_onnx
    from edgeslim.onnxkit.session import session

    p = _unique(tmp_path, ".npz")
    np.savez(p, **arrays_)
    try:
        feeds = load_npz_feeds(p, input_specs(load_onnx(onnx_model)))
    except EdgeslimError as e:
        assert_one_line_error(e, p.name)
        event("refused")
        return
    event("loaded")
    assert feeds and all(np.isfinite(v).all() for f in feeds for v in f.values() if v.dtype.kind == "f")
    sess = session(onnx_model)
    for f in feeds:
        out = sess.run(None, f)[0]
        assert out.shape[-1] == 4


@settings(max_examples=40)
@given(st.one_of(arrays(), st.builds(lambda: np.zeros((4, 1, 8, 8), np.float32))), st.sampled_from([".npz", ".npy"]))
def test_fuzzed_transfer_sets(tmp_path: Path, x: np.ndarray, suffix: str) -> None:
    from edgeslim.data.transfer import load_transfer

    p = _unique(tmp_path, suffix)
    np.save(p, x) if suffix == ".npy" else np.savez(p, x=x)
    try:
        got = load_transfer(str(p), "tiny", (1, 8, 8))
    except EdgeslimError as e:
        assert_one_line_error(e)
        event("refused")
        return
    event("loaded")
    assert got.shape[1:] == (1, 8, 8) and got.dtype == np.float32 and np.isfinite(got).all()


# ------------------------------------------------------------------------------- through the real CLI


def test_bad_data_through_the_cli_exit_1_in_one_line_and_write_nothing(tmp_path: Path, onnx_model: Path) -> None:
    nan = tmp_path / "nan.npz"
    x = np.random.default_rng(0).random((30, 1, 4, 4), dtype=np.float32)
    x[3, 0, 1, 1] = np.nan
    np.savez(nan, x=x, y=np.arange(30) % 2)
    keys = tmp_path / "keys.npz"
    np.savez(keys, inputs=x, labels=np.arange(30) % 2)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(zipfile.ZipFile.__doc__.encode()[:50])
    for bad in (nan, keys, cut):
        out = tmp_path / f"m_{bad.stem}"
        code, _, err = main_inproc("train", "--model", "lenet300", "--task", str(bad), "--out", str(out),
                                   "--epochs", "1")
        assert_user_error(code, err, bad.name)
        assert listing(out) == [] and not list(tmp_path.glob(f".m_{bad.stem}*"))
    calib = tmp_path / "calib.npz"
    np.savez(calib, wrong_name=np.zeros((2, 1, 1, 8, 8), np.float32))
    out = tmp_path / "opt.onnx"
    code, _, err = main_inproc("optimize", str(onnx_model), "--calib", str(calib), "-o", str(out))
    assert_user_error(code, err, "calib.npz", "input")
    assert not out.exists()
