"""Golden file format: round trip, checksums, atomic writes, clear errors."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from conformance import golden as G


def _case(**kw):
    rng = np.random.default_rng(0)
    d = dict(suite="ops", name="toy", kind="activation", config={"name": "relu"},
             inputs={"x": rng.standard_normal((2, 3)).astype(np.float32),
                     "labels": np.arange(2, dtype=np.int64)},
             outputs={"y": rng.standard_normal((2, 3)).astype(np.float32),
                      "flag": np.array([True, False])},
             family="activation", meta={"float32_error": {"y": 1e-7}})
    d.update(kw)
    return G.GoldenCase(**d)


def test_round_trip_keeps_arrays_order_and_metadata(tmp_path):
    c = _case()
    d = G.write_case(tmp_path, c)
    back = G.load_case(d)
    assert list(back.inputs) == ["x", "labels"] and list(back.outputs) == ["y", "flag"]
    for k in c.inputs:
        assert back.inputs[k].dtype == c.inputs[k].dtype
        np.testing.assert_array_equal(back.inputs[k], c.inputs[k])
    for k in c.outputs:
        np.testing.assert_array_equal(back.outputs[k], c.outputs[k])
    meta = json.loads((d / "case.json").read_text())
    assert meta["kind"] == "activation" and meta["config"] == {"name": "relu"}
    assert meta["numpy_version"] == np.__version__
    assert meta["arrays"]["x"]["sha256"] == G.array_sha256(c.inputs["x"])
    assert back.meta["float32_error"] == {"y": 1e-7}


def test_writes_leave_no_temp_files_and_are_world_readable(tmp_path):
    d = G.write_case(tmp_path, _case())
    assert sorted(p.name for p in d.iterdir()) == ["arrays.npz", "case.json"]
    for p in d.iterdir():
        assert os.stat(p).st_mode & stat.S_IRGRP, p


def test_failed_atomic_write_keeps_old_file(tmp_path):
    p = tmp_path / "f.bin"
    G.atomic_write_bytes(p, b"old")
    with pytest.raises(TypeError):
        G.atomic_write_bytes(p, "not bytes")  # fails mid-write
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.bin"]


def test_sha256_depends_on_dtype_and_shape():
    a = np.arange(6, dtype=np.float32)
    assert G.array_sha256(a) != G.array_sha256(a.reshape(2, 3))
    assert G.array_sha256(a) != G.array_sha256(a.view(np.int32))
    assert G.array_sha256(a) == G.array_sha256(a.copy())


def test_tampered_array_is_caught_by_sha(tmp_path):
    d = G.write_case(tmp_path, _case())
    with np.load(d / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["y"] = arrays["y"] + np.float32(1e-3)
    np.savez_compressed(d / "arrays.npz", **arrays)
    with pytest.raises(G.GoldenError, match="sha256 mismatch for array 'y'"):
        G.load_case(d)
    G.load_case(d, check_sha=False)  # readable, only the checksum is wrong


def test_corrupt_npz_and_missing_files_give_one_line_errors(tmp_path):
    d = G.write_case(tmp_path, _case())
    data = (d / "arrays.npz").read_bytes()
    (d / "arrays.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(G.GoldenError, match="corrupt .*arrays.npz"):
        G.load_case(d)
    (d / "arrays.npz").unlink()
    with pytest.raises(G.GoldenError, match="missing .*arrays.npz"):
        G.load_case(d)
    (d / "case.json").unlink()
    with pytest.raises(G.GoldenError, match="missing .*case.json"):
        G.load_case(d)


def test_array_set_must_match_case_json(tmp_path):
    d = G.write_case(tmp_path, _case())
    with np.load(d / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["extra"] = np.zeros(1)
    np.savez_compressed(d / "arrays.npz", **arrays)
    with pytest.raises(G.GoldenError, match=r"unexpected \['extra'\]"):
        G.load_case(d)


def test_input_output_name_clash_rejected(tmp_path):
    c = _case(outputs={"x": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="both input and output"):
        G.write_case(tmp_path, c)
