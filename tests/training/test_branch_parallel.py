"""Branch-parallel training, its core step: N processes (gloo on CPU), each holding the trunk and one block of
branches, train as one process does with the same seed. Not bit for bit: the trunk's gradient is the sum of the
processes' shares in another order than one backward pass sums it, and the loss likewise. Losses agree to float32
rounding (rtol 1e-5); weights to atol 1e-4, a tenth of one Adam step at lr 1e-3: Adam divides each gradient by its
own running size, so a rounding difference in a near-zero gradient can move a weight by a visible part of a step
(measured: 1.5e-5 on 1 of 92,160 weights after 3 steps)."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from antimetric.model.convert import branch_blocks, join_blocks
from antimetric.model.ensemble import build_block, build_model
from antimetric.model.settings import ModelConfig
from antimetric.training.step import branch_parallel_step, training_step

CONFIG = ModelConfig(backbone="tiny", share_type="layer1", ensemble_size=5, meta_class_size=3, with_fc=True,
                     with_random=True, pretrained=False)
STEPS, BATCH = 3, 4


def _data():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(STEPS, BATCH, 3, 32, 32, generator=generator)
    targets = torch.randint(0, CONFIG.meta_class_size, (STEPS, BATCH, CONFIG.ensemble_size), generator=generator)
    return images, targets


def _one_process():
    torch.manual_seed(0)
    model = build_model(CONFIG).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, targets = _data()
    losses = [training_step(model, images[s], targets[s], optimizer, bf16=False)[0].item() for s in range(STEPS)]
    return losses, model.state_dict()


def _rank(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    block = branch_blocks(CONFIG.ensemble_size, world)[rank]
    model = build_block(CONFIG, block).train()  # its branches initialised as one process does
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, targets = _data()
    losses = [branch_parallel_step(model, images[s], targets[s][:, block.start:block.stop], optimizer, bf16=False)[0]
              .item() for s in range(STEPS)]
    torch.save({"losses": losses, "state": model.state_dict()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_train_as_one(tmp_path):
    expected_losses, expected_state = _one_process()
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for found in ranks:
        assert found["losses"] == pytest.approx(expected_losses, rel=1e-5)
    joined = join_blocks([found["state"] for found in ranks])
    assert joined.keys() == expected_state.keys()
    for key, value in expected_state.items():
        torch.testing.assert_close(joined[key], value, atol=1e-4, rtol=1e-4, msg=lambda m, key=key: f"{key}: {m}")
    trunk = [key for key in expected_state if key.startswith("trunk.") and expected_state[key].is_floating_point()]
    assert all(torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]) for key in trunk)  # one trunk, in step
