"""EarlyBirdCallback in a real lightning.Trainer on the CPU."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch", reason="the lightning extra is not installed")

from earlybird.integrations.lightning import EarlyBirdCallback  # noqa: E402
from conftest import TinyVGG  # noqa: E402


class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = TinyVGG()
        self.example_input_array = torch.zeros(1, 3, 8, 8)

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)


def data():
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 3, (64,), generator=g))
    return DataLoader(ds, batch_size=16)


def trainer(tmp_path, callback, epochs, **kw):
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=[callback],
                      default_root_dir=tmp_path, enable_progress_bar=False,
                      enable_model_summary=False, logger=pl.loggers.CSVLogger(tmp_path), **kw)


def test_stop_once_every_ratio_has_its_ticket(tmp_path):
    cb = EarlyBirdCallback(ratios=[0.3, 0.5], window=2, epsilon=0.5, save_dir=str(tmp_path))
    module = Module()
    t = trainer(tmp_path, cb, epochs=20)
    t.fit(module, data())
    assert set(cb.pruner.tickets) == {0.3, 0.5}
    assert cb.pruner.config.total == 20 and cb.config.total is None    # max_epochs, filled in
    drawn_at = max(t.check for t in cb.pruner.tickets.values())
    assert t.current_epoch == drawn_at + 1 < 20            # stopped right after the last draw
    assert "earlybird/distance_0.5" in t.callback_metrics
    saved = torch.load(tmp_path / "tickets.pt", weights_only=True)
    assert set(saved["tickets"]) == {"0.3", "0.5"}
    assert (tmp_path / "lightning_logs").exists()


def test_prune_in_place_reconfigures_the_optimizer_and_resumes(tmp_path):
    cb = EarlyBirdCallback(ratios=[0.5], window=2, epsilon=0.5, on_detect="prune")
    module = Module()
    t = trainer(tmp_path, cb, epochs=5)
    t.fit(module, data())
    assert cb.history is not None and cb.pruner is None
    assert module.model.features[0].out_channels < 4 or module.model.features[6].out_channels < 8
    params = {id(p) for p in module.model.parameters()}
    assert {id(p) for g in t.optimizers[0].param_groups for p in g["params"]} == params
    assert t.current_epoch == 5                            # training went on, small
    ckpt = tmp_path / "last.ckpt"
    t.save_checkpoint(ckpt)
    fresh, cb2 = Module(), EarlyBirdCallback(ratios=[0.5], window=2, epsilon=0.5, on_detect="prune")
    t2 = trainer(tmp_path, cb2, epochs=6)
    t2.fit(fresh, data(), ckpt_path=ckpt)                  # the dense module is rebuilt pruned
    assert [p.shape for p in fresh.model.parameters()] == [p.shape for p in module.model.parameters()]
    assert t2.current_epoch == 6


def test_search_state_round_trips_through_a_lightning_checkpoint(tmp_path):
    cb = EarlyBirdCallback(ratios=[0.5], window=5, epsilon=1e-6, on_detect="continue")
    t = trainer(tmp_path, cb, epochs=3)
    t.fit(Module(), data())
    ckpt = tmp_path / "search.ckpt"
    t.save_checkpoint(ckpt)
    cb2 = EarlyBirdCallback(ratios=[0.5], window=5, epsilon=1e-6, on_detect="continue")
    t2 = trainer(tmp_path, cb2, epochs=4)
    t2.fit(Module(), data(), ckpt_path=ckpt)
    assert cb2.pruner.iterations == [0, 1, 2, 3]            # the 3 restored checks + 1 new
    assert torch.equal(cb2.pruner.history(0.5)[:3], cb.pruner.history(0.5))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"on_detect must be one of \['stop', 'prune', 'continue'\]"):
        EarlyBirdCallback(on_detect="halt")
    with pytest.raises(ValueError, match="prune_ratio 0.9 is not one of ratios"):
        EarlyBirdCallback(ratios=[0.5], prune_ratio=0.9)
    with pytest.raises(ValueError, match="every_n_steps must be an integer >= 1"):
        EarlyBirdCallback(every_n_steps=0)


def test_the_callback_takes_the_pruners_config_and_states_its_defaults():
    import earlybird as eb
    assert EarlyBirdCallback().config == eb.EarlyBirdConfig()
    config = eb.EarlyBirdConfig(ratios=[0.5], window=2, epsilon=0.5, criterion="reference")
    cb = EarlyBirdCallback(config=config, on_detect="continue")
    assert cb.config == config and cb.ratios == (0.5,)
    assert EarlyBirdCallback(config=config, window=3).config.window == 3   # kwargs over config
    with pytest.raises(ValueError, match="window must be an integer >= 2, got 1"):
        EarlyBirdCallback(window=1)                                        # refused at once
    with pytest.raises(TypeError, match=r"unknown settings \['windw'\]"):
        EarlyBirdCallback(windw=3)


def test_under_gradient_accumulation_every_optimizer_step_is_checked_once(tmp_path):
    # 4 batches per epoch, 2 per optimizer step: 2 steps per epoch, 4 in 2 epochs
    cb = EarlyBirdCallback(ratios=[0.5], every_n_steps=1, on_detect="continue")
    t = trainer(tmp_path, cb, epochs=2, accumulate_grad_batches=2)
    t.fit(Module(), data())
    assert t.global_step == 4
    assert cb.pruner.iterations == [1, 2, 3, 4]
    assert cb.pruner.config.total == 4                     # the schedule in optimizer steps


def test_the_schedule_is_what_max_epochs_and_max_steps_allow(tmp_path):
    # 4 batches an epoch: max_steps=6 ends the fit inside epoch 2 whatever max_epochs says
    for epochs, steps, total in ((3, -1, 3), (-1, 6, 2), (50, 6, 2)):
        cb = EarlyBirdCallback(ratios=[0.5], on_detect="continue")
        t = trainer(tmp_path, cb, epochs=epochs, max_steps=steps)
        t.fit(Module(), data())
        assert cb.pruner.config.total == total and cb.pruner.config.plateau_span() == 1


def test_stopping_is_decided_by_all_ranks_together(tmp_path, monkeypatch):
    # a rank whose detector has not fired keeps every rank training: the stop is reduced
    cb = EarlyBirdCallback(ratios=[0.5], window=2, epsilon=0.5)
    t = trainer(tmp_path, cb, epochs=6)
    calls = []

    def another_rank_disagrees(decision, all=True):
        calls.append((decision, all))
        return False
    monkeypatch.setattr(t.strategy, "reduce_boolean_decision", another_rank_disagrees)
    t.fit(Module(), data())
    assert 0.5 in cb.pruner.tickets and t.current_epoch == 6      # drawn, and not stopped
    ours = [d for d, every_rank in calls if every_rank]            # Lightning reduces too (all=False)
    assert len(ours) == 6                                          # one reduction per check
    assert ours.count(True) == 6 - cb.pruner.tickets[0.5].check    # True from the draw on
