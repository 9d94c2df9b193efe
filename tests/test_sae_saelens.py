"""SAELens format round trip, both directions, against the real `sae-lens` package.

sae-lens pins transformer-lens < 4 and many extras, so it lives in its own venv
(`.venv-saelens`, see the Makefile / report for the install commands) and runs here in a
subprocess. The test skips, saying so, where that venv is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from anatomist.sae import SAE, SAEConfig, load_sae, save_sae

ROOT = Path(__file__).resolve().parents[1]
SAELENS_PY = Path(os.environ.get("ANATOMIST_SAELENS_PYTHON", ROOT / ".venv-saelens" / "bin" / "python"))

pytestmark = pytest.mark.skipif(not SAELENS_PY.is_file(),
                                reason=f"sae-lens venv not found at {SAELENS_PY} (make saelens-venv)")

# Runs inside the sae-lens venv. argv: work folder. Direction 1: load every anatomist-saved SAE in
# work/ours/* with SAELens and write its encode/forward outputs. Direction 2: build SAELens SAEs
# (inference classes and a BatchTopK training SAE saved for inference) with random weights, save
# them in work/theirs/* and write their outputs.
HELPER = r'''
import sys, json, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
from sae_lens import (SAE, TopKSAE, TopKSAEConfig, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE,
                      StandardSAEConfig, BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig)
work = Path(sys.argv[1])
x = load_file(str(work / "x.safetensors"))["x"]
result = {}
for folder in sorted((work / "ours").iterdir()):
    sae = SAE.load_from_disk(str(folder))
    with torch.no_grad():
        save_file({"f": sae.encode(x).contiguous(), "y": sae(x).contiguous()}, str(folder / "saelens_out.safetensors"))
    result[folder.name] = type(sae).__name__
torch.manual_seed(0)
def randomize(sae):
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if name != "threshold" else 0.0) + (0.2 if name == "threshold" else 0.0))
    return sae
d_in, d_sae = x.shape[-1], 24
theirs = {
    "topk": TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=5)),
    "topk_rescaled": TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=5, rescale_acts_by_decoder_norm=True)),
    "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae)),
    "standard": StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae)),
    "standard_no_bdec_in": StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False)),
}
for name, sae in theirs.items():
    randomize(sae)
    sae.save_model(str(work / "theirs" / name))
bt = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=5))
randomize(bt)
bt.topk_threshold = torch.tensor(0.25, dtype=torch.double)
bt.save_inference_model(str(work / "theirs" / "batchtopk_inference"))
for folder in sorted((work / "theirs").iterdir()):
    sae = SAE.load_from_disk(str(folder))
    with torch.no_grad():
        save_file({"f": sae.encode(x).contiguous(), "y": sae(x).contiguous()}, str(folder / "saelens_out.safetensors"))
    result[folder.name] = type(sae).__name__
print(json.dumps(result))
'''


def _ours(arch: str, seed: int) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in=8, d_sae=24, architecture=arch, k=5, norm_scale=0.125, layer=3, model="m"))
    sae.init_weights(g, b_dec=torch.randn(8, generator=g) * 8, threshold=0.3)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(24, generator=g) * 0.2)
        sae.W_enc.add_(torch.randn(8, 24, generator=g) * 0.2)
    return sae


@pytest.fixture(scope="module")
def saelens_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("saelens")
    x = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(1)) * 8             # raw scale ≈ 8·√8
    save_file({"x": x}, str(work / "x.safetensors"))
    ours = {arch: _ours(arch, i) for i, arch in enumerate(["batchtopk", "topk", "jumprelu", "relu"])}
    for arch, sae in ours.items():
        save_sae(sae, work / "ours" / arch)
    (work / "theirs").mkdir()
    proc = subprocess.run([str(SAELENS_PY), "-c", HELPER, str(work)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    classes = json.loads(proc.stdout.strip().splitlines()[-1])
    return work, x, ours, classes


@pytest.mark.parametrize("arch", ["batchtopk", "topk", "jumprelu", "relu"])
def test_anatomist_sae_loads_in_saelens(saelens_run, arch):
    work, x, ours, classes = saelens_run
    assert classes[arch] == {"batchtopk": "JumpReLUSAE", "topk": "TopKSAE", "jumprelu": "JumpReLUSAE",
                             "relu": "StandardSAE"}[arch]
    out = load_file(str(work / "ours" / arch / "saelens_out.safetensors"))
    sae = ours[arch]
    with torch.no_grad():
        f, y = sae.encode(x), sae(x)
    assert (f > 0).any()
    torch.testing.assert_close(out["f"], f, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["y"], y, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["topk", "topk_rescaled", "jumprelu", "standard", "standard_no_bdec_in",
                                  "batchtopk_inference"])
def test_saelens_sae_loads_here(saelens_run, name):
    work, x, _, _ = saelens_run
    sae = load_sae(work / "theirs" / name)
    out = load_file(str(work / "theirs" / name / "saelens_out.safetensors"))
    with torch.no_grad():
        f, y = sae.encode(x), sae(x)
    torch.testing.assert_close(f, out["f"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y, out["y"], rtol=1e-4, atol=1e-4)
    # and it saves back to an identical function
    save_sae(sae, work / "resaved" / name)
    again = load_sae(work / "resaved" / name)
    torch.testing.assert_close(again(x), y)
