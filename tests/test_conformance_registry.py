"""Backend lookup: entry points, module:Class, one-line errors."""

from __future__ import annotations

import sys

import pytest

from conformance.protocol import BackendError
from conformance.registry import available_backends, load_backend
from refbasis.cli import main


def test_entry_points_declare_numpy_and_jax():
    table = available_backends()
    assert table["numpy"] == "conformance.backends.numpy_backend:NumpyBackend"
    assert table["jax"] == "conformance.backends.jax_backend:JaxBackend"


def test_load_numpy_by_name_and_by_path():
    b = load_backend("numpy")
    assert b.name == "numpy" and "ops" in b.supported_suites and b.tiers == ("highest",)
    b2 = load_backend("conformance.backends.numpy_backend:NumpyBackend")
    assert type(b2) is type(b)


def test_unknown_backend_lists_the_registered_ones():
    with pytest.raises(BackendError, match=r"unknown backend 'nope' \(registered: .*numpy"):
        load_backend("nope")
    with pytest.raises(BackendError, match="has no attribute 'Nope'"):
        load_backend("conformance.backends.numpy_backend:Nope")


def _hide_jax(monkeypatch):
    for name in list(sys.modules):
        if name == "jax" or name.startswith(("jax.", "jaxlib", "conformance.backends.jax_backend")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "jax", None)  # "import jax" -> ModuleNotFoundError


def test_missing_jax_gives_one_clear_line(monkeypatch):
    _hide_jax(monkeypatch)
    with pytest.raises(BackendError) as ei:
        load_backend("jax")
    assert str(ei.value) == "backend 'jax' needs the jax extra: pip install 'refbasis[jax]'"


def test_cli_prints_that_line_and_exits_2(monkeypatch, capsys):
    _hide_jax(monkeypatch)
    rc = main(["conform", "--backend", "jax", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines() == [
        "refbasis conform: backend 'jax' needs the jax extra: pip install 'refbasis[jax]'"]


def test_missing_third_party_dependency(tmp_path, monkeypatch):
    (tmp_path / "myport.py").write_text("import not_installed_accelerator_lib\n"
                                        "class B: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendError, match="needs the 'not_installed_accelerator_lib' package"):
        load_backend("myport:B")


def test_incomplete_backend_rejected(tmp_path, monkeypatch):
    (tmp_path / "halfport.py").write_text("class B:\n    name = 'half'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendError, match="lacks 'supported_suites'"):
        load_backend("halfport:B")


def test_tier_the_backend_lacks_is_a_usage_error(capsys):
    rc = main(["conform", "--backend", "numpy", "--tier", "bf16", "--no-progress"])
    assert rc == 2 and "has no tier 'bf16'" in capsys.readouterr().err
