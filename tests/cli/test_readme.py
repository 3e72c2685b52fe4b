"""The README's Python examples run as written (in a scratch folder, with smaller settings
where the README's would take minutes)."""
from __future__ import annotations

import re
from pathlib import Path


README = Path(__file__).resolve().parents[2] / "README.md"


def python_block_after(marker: str) -> str:
    text = README.read_text()
    start = text.index(marker)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block after {marker!r}"
    return match.group(1)


def test_user_model_example_runs(tmp_path, monkeypatch, capsys):
    code = python_block_after("<!-- example: user-model")
    # the same program, smaller: 2 epochs, 40 points, K = 200, 150 fit steps
    code = code.replace("epochs=3", "epochs=2").replace("[:100]", "[:40]").replace("k=500", "k=200") \
        .replace("steps=300", "steps=150")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.split()
    log_px, gap = float(printed[-2]), float(printed[-1])
    # Student-t densities of pixels in [0, 1] with small scales: log p(x) is large and positive
    assert log_px > 0 and gap > 0
    assert (tmp_path / "runs" / "student-t" / "checkpoint.pt").exists()


def test_pyro_example_runs(tmp_path, monkeypatch, capsys):
    code = python_block_after("<!-- example: pyro-example")
    code = code.replace("epochs=3", "epochs=1").replace("[:100]", "[:30]").replace("k=500", "k=100") \
        .replace("PyroExampleVAE()", "PyroExampleVAE(z_dim=8, hidden_dim=64)")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    log_px = float(capsys.readouterr().out.split()[-1])
    assert -600 < log_px < -100   # nats per MNIST digit after an epoch of the sample
    saved = (tmp_path / "runs" / "pyro-example" / "config.json").read_text()
    assert '"latent": {' in saved and '"latent": [' in saved
