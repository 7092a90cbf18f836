import pytest
import torch

from antimetric.model.ensemble import build_model
from antimetric.model.settings import ModelConfig


def test_activation_checkpointing_gives_the_same_gradients():
    config = ModelConfig(backbone="tiny", share_type="layer1", ensemble_size=3, meta_class_size=4, with_fc=True,
                         with_random=True, pretrained=False)
    torch.manual_seed(0)
    plain = build_model(config)
    torch.manual_seed(0)
    checkpointed = build_model(config)
    checkpointed.set_grad_checkpointing(True)
    assert checkpointed.grad_checkpointing and not plain.grad_checkpointing
    images, weights = torch.randn(4, 3, 32, 32), torch.rand(4, 3).softmax(1)
    out_plain, out_ckpt = plain(images, weights), checkpointed(images, weights)
    projection = torch.randn(out_plain.shape)
    (out_plain * projection).sum().backward()
    (out_ckpt * projection).sum().backward()
    assert torch.allclose(out_plain, out_ckpt)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name


def test_recomputation_does_not_update_batchnorm_statistics_twice():
    """The backward pass runs checkpointed blocks again; their BatchNorm running statistics must
    come out as after one plain training step."""
    config = ModelConfig(backbone="tiny", share_type="maxpool", ensemble_size=2, meta_class_size=4, with_fc=True,
                         pretrained=False)
    models = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = build_model(config)
        model.set_grad_checkpointing(checkpointed)
        model(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))).sum().backward()
        models.append(model)
    plain, checkpointed = (dict(m.named_buffers()) for m in models)
    for key, value in plain.items():
        assert torch.allclose(checkpointed[key].float(), value.float(), rtol=1e-5, atol=1e-6), key
    assert any(key.endswith("running_mean") and not torch.equal(value, torch.zeros_like(value))
               for key, value in plain.items())  # the plain step did update them


def test_the_reference_loop_refuses_activation_checkpointing():
    config = ModelConfig(backbone="tiny", share_type="layer1", ensemble_size=2, meta_class_size=4, with_fc=True,
                         pretrained=False)
    reference = build_model(config, "reference")
    reference.set_grad_checkpointing(False)
    with pytest.raises(ValueError, match="batched network"):
        reference.set_grad_checkpointing(True)
    assert not reference.grad_checkpointing
