"""The batched network computes exactly what the seed's per-branch loop computes."""
import copy

import pytest
import torch

from antimetric.model.convert import batched_to_reference, reference_to_batched
from antimetric.model.ensemble import build_model
from antimetric.model.settings import ModelConfig

BACKBONES = ["tiny", "resnet18", "resnet34", "resnet50", "resnext50"]
# resnet34 is left out of the float64 cases at maxpool and layer1: its stages are resnet18's BasicBlocks, batched and
# converted by the same code, only more of them a stage (as many as resnet50's and resnext50's), so it checked nothing
# there that resnet18's cases do not; the float32 check keeps it for the rounding of its deeper stacks
FLOAT64_BACKBONES = [backbone for backbone in BACKBONES if backbone != "resnet34"]
M, D = 2, 5


def _cases(*cases: tuple) -> list:
    """A real ResNet takes seconds per case on a CPU: those run in `make test`; the tiny ones in `make test-fast` too."""
    return [pytest.param(*case, marks=() if case[0] == "tiny" else pytest.mark.slow) for case in cases]


def _config(backbone, share_type, with_fc=True, with_random=True) -> ModelConfig:
    return ModelConfig(backbone=backbone, share_type=share_type, ensemble_size=M, meta_class_size=D, with_fc=with_fc,
                       with_random=with_random, pretrained=False)


def _batched(backbone, share_type, seed=0):
    """The batched network of _pair alone, for the tests that need no reference."""
    torch.manual_seed(seed)
    return build_model(_config(backbone, share_type), "batched")


def _pair(backbone, share_type, with_fc=True, with_random=True, dtype=torch.float32, seed=0):
    config = _config(backbone, share_type, with_fc, with_random)
    torch.manual_seed(seed)
    batched = build_model(config, "batched").to(dtype)
    torch.manual_seed(seed)  # the reference is built from the same random draw
    reference = build_model(config, "reference").to(dtype)
    return batched, reference


def _in_float64(*models):
    """Copies of float32 models in float64: what _pair(..., dtype=torch.float64) builds from the same draw, without
    drawing a ResNet's weights again (most of a build's time)."""
    return tuple(copy.deepcopy(model).to(torch.float64) for model in models)


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _forward_backward(model, images, weights, seed):
    model.zero_grad(set_to_none=True)  # the next backward writes new tensors: the ones returned need no copy
    out = model(images, weights)
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    (out * projection).sum().backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    return out.detach(), grads


def _compare(batched, reference, size=32, batch=4, dtype=torch.float32, train=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g).to(dtype)  # the same draw in either dtype
    weights = torch.rand(batch, M, generator=g).softmax(1).to(dtype)
    batched.train(train)
    reference.train(train)
    out_b, grads_b = _forward_backward(batched, images, weights, seed)
    out_r, grads_r = _forward_backward(reference, images, weights, seed)
    grads_r = reference_to_batched(grads_r, M)
    assert grads_r.keys() == grads_b.keys()
    return out_b, out_r, grads_b, grads_r


@pytest.mark.parametrize("backbone,share_type", _cases(
    *((b, s) for b in FLOAT64_BACKBONES for s in ("maxpool", "layer1")),
    ("tiny", "layer2"), ("tiny", "layer3"), ("tiny", "layer4"), ("resnet18", "layer3"), ("resnext50", "layer4"),
))
def test_same_outputs_and_gradients_in_float64(backbone, share_type):
    """In float64 the two formulations agree to rounding, output and every gradient tensor."""
    batched, reference = _pair(backbone, share_type, dtype=torch.float64)
    for train in (True, False):
        out_b, out_r, grads_b, grads_r = _compare(batched, reference, dtype=torch.float64, train=train)
        assert _rel(out_b, out_r) < 1e-8
        for key in grads_r:
            assert _rel(grads_b[key], grads_r[key]) < 1e-8, key


@pytest.mark.parametrize("backbone,share_type,with_fc", _cases(
    ("tiny", "maxpool", False), ("tiny", "layer1", True), ("tiny", "layer2", False), ("resnet18", "layer1", True),
    ("resnet18", "layer2", False), ("resnet34", "layer3", True), ("resnet50", "layer1", True),
    ("resnext50", "layer1", False), ("resnext50", "layer3", True),
))
def test_float32_matches_float64_as_closely_as_the_loop(backbone, share_type, with_fc):
    """float32: within 1e-5 (relative) of the float64 result, output and every gradient tensor,
    wherever the seed's loop itself is; never more than 10x further off than the loop.

    Train-mode BatchNorm on random weights makes some gradients ill-conditioned (the loop
    itself drifts up to ~1e-2 from float64 in deep Bottleneck stacks and in the trunk of
    share_type maxpool), so the loop's own float32 error is the yardstick there."""
    batched, reference = _pair(backbone, share_type, with_fc=with_fc)
    exact_out, _, exact_grads, _ = _compare(*_in_float64(batched, reference), dtype=torch.float64)
    out_b, out_r, grads_b, grads_r = _compare(batched, reference)
    assert _rel(out_b.double(), exact_out) <= max(1e-5, 10 * _rel(out_r.double(), exact_out))
    for key, exact in exact_grads.items():
        loop_error = _rel(grads_r[key].double(), exact)
        assert _rel(grads_b[key].double(), exact) <= max(1e-5, 10 * loop_error), key


def test_every_branch_parameter_gets_a_finite_gradient():
    _, _, grads, _ = _compare(*_pair("tiny", "layer1"))
    for key, grad in grads.items():
        assert torch.isfinite(grad).all(), key
        if key.startswith("branches.stages") and grad.dim() > 1:  # conv weights: each branch slice
            for branch, part in enumerate(grad.chunk(M)):
                assert part.abs().sum() > 0, (key, branch)


def test_conversion_round_trip_is_exact():
    state = _batched("resnext50", "layer2").state_dict()
    back = reference_to_batched(batched_to_reference(state, M), M)
    assert back.keys() == state.keys()
    for key in state:
        assert torch.equal(back[key], state[key]), key


def test_branches_start_from_their_own_random_weights():
    batched = _batched("tiny", "layer1")
    conv = batched.state_dict()["branches.stages.layer2.0.conv2.weight"].chunk(M)
    assert not torch.equal(conv[0], conv[1])


def test_with_random_draws_weights_in_training_and_uses_their_mean_in_evaluation():
    batched = _batched("tiny", "layer1")
    images = torch.randn(4, 3, 32, 32)
    batched.train()
    weights = batched.branch_weights(4, images.device)
    assert torch.allclose(weights.sum(1), torch.ones(4))
    assert not torch.allclose(weights, torch.full_like(weights, 1 / M))
    batched.eval()
    assert torch.equal(batched.branch_weights(4, images.device), torch.full((4, M), 1 / M))
    assert torch.allclose(batched(images), batched(images, torch.full((4, M), 1 / M)))


def test_embedding_is_unit_length_per_branch():
    batched = _batched("tiny", "layer1")
    batched.eval()
    embedding = batched.embed(torch.randn(2, 3, 32, 32))
    assert embedding.shape == (2, M * D)
    assert torch.allclose(embedding.view(2, M, D).norm(dim=-1), torch.ones(2, M), atol=1e-6)
