import torch

from antimetric.config import ModelConfig
from antimetric.model import build_model


def test_activation_checkpointing_gives_the_same_gradients():
    config = ModelConfig(backbone="tiny", share_type="layer1", ensemble_size=3, meta_class_size=4, with_fc=True,
                         with_random=True, pretrained=False)
    torch.manual_seed(0)
    plain = build_model(config)
    torch.manual_seed(0)
    checkpointed = build_model(config)
    checkpointed.branches.checkpoint_blocks = True
    images, weights = torch.randn(4, 3, 32, 32), torch.rand(4, 3).softmax(1)
    out_plain, out_ckpt = plain(images, weights), checkpointed(images, weights)
    projection = torch.randn(out_plain.shape)
    (out_plain * projection).sum().backward()
    (out_ckpt * projection).sum().backward()
    assert torch.allclose(out_plain, out_ckpt)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name
