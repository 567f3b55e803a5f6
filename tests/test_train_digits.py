"""The optional real-pixel benchmark: a clear message without the extra; with it, the data."""

from __future__ import annotations

import pytest
import torch

from srem_kernels.train import data, digits


def test_check_data_says_the_digits_are_real_images(monkeypatch, capsys):
    """--check-data's first line says what the data is: scikit-learn's real images, not generated
    ones (the extra faked: its 1797 images and the caption embeddings random here)."""
    import sys
    import types

    from srem_kernels.train import cli

    g = torch.Generator().manual_seed(0)
    fake = types.SimpleNamespace(data=torch.randint(17, (1797, 64), generator=g).numpy(),
                                 target=torch.randint(10, (1797,), generator=g).numpy())
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setitem(sys.modules, "sklearn.datasets", types.SimpleNamespace(load_digits=lambda: fake))
    monkeypatch.setattr(digits, "missing", lambda: None)
    monkeypatch.setattr(digits, "embed_captions", lambda caps: torch.randn(len(caps), 8, generator=g))
    assert cli.main(["--check-data", "--dataset", "digits", "--noise", "0.2"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "digits: scikit-learn's 8x8 handwritten digits (real images), captions from templates")


def test_without_the_extra_a_clear_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(data.DataError, match=r"needs the optional extra \(pip install 'srem-kernels\[digits\]'\): scikit-learn is not installed"):
        data.load("digits", noise=0.2, seed=0)


@pytest.mark.skipif(digits.missing() is not None, reason=digits.missing() or "")
def test_digits_with_minilm_captions():
    d = data.load("digits", noise=0.4, seed=0)
    n_train, n_val, n_test = digits.SPLIT
    assert d.train.images.shape == (n_train, 64) and len(d.val) == n_val and len(d.test) == n_test
    assert d.train.captions.shape == (n_train, 384)  # MiniLM-L6's width
    assert d.info["layout"].startswith("scikit-learn's 8x8 handwritten digits (real images)")
    assert torch.allclose(d.train.captions.norm(dim=1), torch.ones(n_train), atol=1e-3)  # normalised sentence embeddings
    # flags: a shuffled caption is noisy only when it lands on another digit
    assert torch.equal(d.train.noisy, d.train.img_key[d.train.cap2img] != d.train.cap_key)
    assert 0.25 < d.train.noisy.double().mean() <= 0.4
    # captions of the same digit are closer than captions of different digits
    c, y = d.test.captions, d.test.cap_key
    sim, same = c @ c.T, y[:, None] == y[None]
    assert sim[same].mean() > sim[~same].mean() + 0.1
