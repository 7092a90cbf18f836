"""Kernel-level profile of one training step of the batched seed configuration on CUDA.

    python benchmarks/profile_step.py [--nchw]
"""
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from antimetric.config import ModelConfig  # noqa: E402
from antimetric.model import build_model  # noqa: E402

torch.backends.cudnn.benchmark = True
config = ModelConfig(backbone="resnet18", share_type="layer1", ensemble_size=48, meta_class_size=12, with_fc=True,
                     pretrained=False)
device = torch.device("cuda")
with device:
    model = build_model(config)
fmt = torch.contiguous_format if "--nchw" in sys.argv else torch.channels_last
model = model.to(memory_format=fmt)
optimizer = torch.optim.Adam(model.parameters(), 1e-4, fused=True)
images = torch.randn(32, 3, 256, 256, device=device).contiguous(memory_format=fmt)
targets = torch.randint(0, 12, (32, 48), device=device)


def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(images).flatten(0, 1).float(), targets.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


for _ in range(5):
    step()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(3):
        step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22, max_name_column_width=70))
