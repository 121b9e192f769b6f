"""Loaders on fixtures the tests write: npz (both key layouts, three image layouts), image folder, CSV,
CIFAR-10 binary; and the error messages for wrong shapes, missing keys and labels out of range."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgeslim.data import load_task
from edgeslim.errors import EdgeslimError


def test_digits_builtin_is_real_and_split():
    t = load_task("digits")
    assert t.input_shape == (1, 8, 8)
    assert t.num_classes == 10
    assert len(t.x_test) == 360 and len(t.x_train) + len(t.x_val) == 1797 - 360
    assert 0.0 <= t.x_train.min() and t.x_train.max() <= 1.0
    assert t.x_train.dtype == np.float32 and t.y_train.dtype == np.int64


def test_digits_read_without_sklearn_matches_load_digits():
    from sklearn.datasets import load_digits

    from edgeslim.data.builtin import _digits_arrays

    images, target = _digits_arrays()
    ref = load_digits()
    assert np.array_equal(images, ref.images) and np.array_equal(target, ref.target)


def test_mnist1d_cache_holds_the_generated_set(tmp_path, monkeypatch):
    from mnist1d.data import get_dataset_args, make_dataset

    from edgeslim.data import builtin

    monkeypatch.setenv("EDGESLIM_CACHE", str(tmp_path))
    first = builtin._mnist1d_arrays()  # generated and written
    files = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(files) == 1
    again = builtin._mnist1d_arrays()  # read back
    ref = make_dataset(get_dataset_args())
    for k in builtin.MNIST1D_KEYS:
        assert np.array_equal(again[k], first[k])
        assert np.array_equal(again[k], np.asarray(ref[k]).astype(again[k].dtype))
    files[0].write_bytes(b"not an npz")  # a broken cache file is regenerated, not trusted
    assert np.array_equal(builtin._mnist1d_arrays()["x"], first["x"])


def test_mnist1d_builtin_generated():
    t = load_task("mnist1d")
    assert t.input_shape == (1, 40)
    assert t.num_classes == 10
    assert len(t.x_test) == 1000


@pytest.mark.parametrize(
    "shape,expect",
    [((20, 6, 5), (1, 6, 5)), ((20, 6, 5, 3), (3, 6, 5)), ((20, 3, 6, 5), (3, 6, 5)), ((20, 7), (7,)),
     ((20, 1, 40), (1, 40)), ((20, 3, 32), (3, 32)), ((20, 3, 8), (1, 3, 8))],  # signals (N, C, L); a short one is an image
)
def test_npz_layouts(tmp_path, shape, expect):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=shape).astype(np.uint8)
    y = np.arange(20) % 3
    p = tmp_path / "d.npz"
    np.savez(p, x=x, y=y)
    t = load_task(str(p))
    assert t.input_shape == expect
    assert t.num_classes == 3
    assert t.x_train.max() <= 1.0  # uint8 scaled to [0, 1]
    assert len(t.x_train) + len(t.x_val) + len(t.x_test) == 20


def test_npz_train_test_keys(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x_train=np.zeros((30, 4), np.float32), y_train=np.arange(30) % 2,
             x_test=np.ones((10, 4), np.float32), y_test=np.arange(10) % 2)
    t = load_task(str(p))
    assert len(t.x_test) == 10 and t.x_test.min() == 1.0


def test_npz_missing_keys(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, images=np.zeros((4, 2)))
    with pytest.raises(EdgeslimError, match=r"bad.npz: missing keys.*x_train.*found images"):
        load_task(str(p))


def test_npz_labels_out_of_range(tmp_path):
    p = tmp_path / "lab.npz"
    np.savez(p, x_train=np.zeros((10, 3)), y_train=np.arange(10) % 2,
             x_test=np.zeros((4, 3)), y_test=np.array([0, 1, 5, 1]))
    with pytest.raises(EdgeslimError, match=r"lab.npz: y_test has label 5"):
        load_task(str(p))
    np.savez(p, x=np.zeros((10, 3)), y=np.array([0, 1, -1, 1, 0, 1, 0, 1, 0, 1]))
    with pytest.raises(EdgeslimError, match=r"labels out of range"):
        load_task(str(p))


def test_npz_wrong_shape(tmp_path):
    p = tmp_path / "shape.npz"
    np.savez(p, x=np.zeros((10, 2, 2, 2, 2)), y=np.zeros(10))
    with pytest.raises(EdgeslimError, match=r"shape.npz: key 'x'.*got shape \(10, 2, 2, 2, 2\)"):
        load_task(str(p))
    np.savez(p, x=np.zeros((10, 3)), y=np.zeros(9))
    with pytest.raises(EdgeslimError, match=r"key 'x' has 10 samples but key 'y' has 9"):
        load_task(str(p))


def test_corrupt_npz(tmp_path):
    p = tmp_path / "c.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(EdgeslimError, match=r"c.npz: not a readable .npz"):
        load_task(str(p))


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    t = load_task(str(tmp_path))
    assert t.input_shape == (3, 5, 4)
    assert t.num_classes == 2 and t.meta["classes"] == ["cat", "dog"]


def test_image_folder_bad_image(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / c / "ok.png")
    (tmp_path / "b" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(EdgeslimError, match=r"broken.png: not a readable image"):
        load_task(str(tmp_path))


def test_csv(tmp_path):
    p = tmp_path / "t.csv"
    rows = ["f1,f2,label"] + [f"{i},{i * 2},{'yes' if i % 2 else 'no'}" for i in range(20)]
    p.write_text("\n".join(rows))
    t = load_task(str(p))
    assert t.input_shape == (2,)
    assert t.meta["classes"] == ["no", "yes"]


def test_csv_errors(tmp_path):
    p = tmp_path / "n.csv"
    p.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(EdgeslimError, match=r"n.csv: no label column"):
        load_task(str(p))
    p.write_text("a,label\n1,0\nx,1\n2,1\n")
    with pytest.raises(EdgeslimError, match=r"n.csv:3: non-numeric"):
        load_task(str(p))


def _cifar_records(n: int, rng: np.random.Generator) -> bytes:
    rec = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
    rec[:, 0] = np.arange(n) % 10
    return rec.tobytes()


def test_cifar_bin(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "data_batch_1.bin").write_bytes(_cifar_records(30, rng))
    (tmp_path / "test_batch.bin").write_bytes(_cifar_records(10, rng))
    t = load_task(str(tmp_path))
    assert t.input_shape == (3, 32, 32) and t.num_classes == 10 and len(t.x_test) == 10


def test_cifar_bin_truncated(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "data_batch_1.bin").write_bytes(_cifar_records(3, rng)[:-5])
    (tmp_path / "test_batch.bin").write_bytes(_cifar_records(2, rng))
    with pytest.raises(EdgeslimError, match=r"data_batch_1.bin: size .* not a multiple"):
        load_task(str(tmp_path))


def test_unknown_task():
    with pytest.raises(EdgeslimError, match=r"unknown task 'nope'.*digits, digits28, mnist1d"):
        load_task("nope")
