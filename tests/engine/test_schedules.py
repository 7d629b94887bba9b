"""Learning-rate schedules as Hugging Face computes them: the LR alignkit's optimizer gets at every step equals what a
transformers Trainer (and so TRL's trainers, which subclass it) gives the same settings, and hand-computed values."""
import math

import pytest
import torch

from alignkit.config import recipe_from_dict
from alignkit.engine.backends import make_optimizer, make_scheduler
from alignkit.errors import RecipeError

CASES = [("linear", 3, {}), ("cosine", 2, {}), ("constant_with_warmup", 4, {}), ("constant", 0, {}),
         ("cosine_with_min_lr", 2, {"min_lr_rate": 0.1}), ("warmup_stable_decay", 2, {"num_decay_steps": 4})]


def recipe(scheduler, warmup, kwargs, steps=12):
    return recipe_from_dict({"model": {"path": "builtin:tiny-llama"}, "data": {"train": "builtin:concise_arithmetic"},
                             "objective": {"name": "sft"}, "trainer": {"max_steps": steps},
                             "optim": {"lr": 1e-3, "scheduler": scheduler, "warmup_steps": warmup,
                                       "scheduler_kwargs": kwargs}})


def alignkit_lrs(r):
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, r)
    scheduler = make_scheduler(optimizer, r)
    lrs = []
    for _ in range(r.trainer.max_steps):
        lrs.append(optimizer.param_groups[0]["lr"])  # the LR the optimizer step uses
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("scheduler,warmup,kwargs", CASES)
def test_every_step_equals_a_transformers_trainer(tmp_path, scheduler, warmup, kwargs):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, lr_scheduler_type=scheduler,
                             warmup_steps=warmup, max_steps=12, lr_scheduler_kwargs=kwargs, report_to=[],
                             use_cpu=True)
    model = torch.nn.Linear(2, 2)
    trainer = Trainer(model=model, args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=12)
    expected = []
    for _ in range(12):
        expected.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert alignkit_lrs(recipe(scheduler, warmup, kwargs)) == pytest.approx(expected, rel=1e-12, abs=0)


def test_hand_computed_values():
    lrs = alignkit_lrs(recipe("linear", 3, {}))  # warm-up from 0 (as TRL does), then linear to 0 at step 12
    assert lrs[:5] == pytest.approx([0, 1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3 * 8 / 9])
    cos = alignkit_lrs(recipe("cosine", 2, {}))
    assert cos[2] == pytest.approx(1e-3) and cos[7] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    floor = alignkit_lrs(recipe("cosine_with_min_lr", 2, {"min_lr_rate": 0.1}))
    assert min(floor[2:]) >= 1e-4 - 1e-12


def test_schedule_errors():
    with pytest.raises(RecipeError, match="constant schedule has no warm-up; use optim.scheduler: "
                                          "constant_with_warmup"):
        recipe("constant", 5, {})
    with pytest.raises(RecipeError, match="optim.scheduler_kwargs.*warmup_stable_decay.*num_decay_steps"):
        recipe("warmup_stable_decay", 2, {})
    with pytest.raises(RecipeError, match="optim.scheduler_kwargs.*min_lr_rate"):
        recipe("cosine_with_min_lr", 2, {})


def test_num_epochs_sets_max_steps():
    from alignkit.pipelines.preference import with_epochs

    r = recipe_from_dict({"model": {"path": "builtin:tiny-llama"}, "data": {"train": "builtin:concise_arithmetic"},
                          "objective": {"name": "sft"}, "trainer": {"num_epochs": 1.5, "micro_batch_size": 4,
                                                                    "grad_accum": 2}})
    assert with_epochs(r, 64).trainer.max_steps == 12  # ceil(1.5 x 64 / 8)
    assert with_epochs(r, 65).trainer.max_steps == 13
    plain = recipe("linear", 0, {})
    assert with_epochs(plain, 64) is plain
    with pytest.raises(RecipeError, match="trainer.num_epochs.*online.rounds x online.steps_per_round"):
        recipe_from_dict({"model": {"path": "builtin:tiny-llama"}, "objective": {"name": "pmpo"},
                          "trainer": {"num_epochs": 1},
                          "online": {"rounds": 2, "prompts": "builtin:concise_arithmetic"}})


@pytest.mark.parametrize("scheduler,warmup,kwargs", CASES)
def test_a_resumed_schedule_takes_a_new_peak_lr(scheduler, warmup, kwargs):
    """A run resumed with another optim.lr (a PBT trial's mutated one): from the checkpoint's step on, the optimizer
    steps with exactly the LRs of a run planned with the new lr from the start."""
    from alignkit.engine.backends import Placement

    old, new = recipe(scheduler, warmup, kwargs), recipe(scheduler, warmup, kwargs)
    new.optim.lr = 4e-4
    model = torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, old)
    sched = make_scheduler(optimizer, old)
    for _ in range(5):
        optimizer.step()
        sched.step()
    saved = optimizer.state_dict(), sched.state_dict()
    resumed = Placement()
    resumed.optimizer = make_optimizer(model, old)  # what a resumed run builds, then loads
    resumed.scheduler = make_scheduler(resumed.optimizer, old)
    resumed.optimizer.load_state_dict(saved[0])
    resumed.scheduler.load_state_dict(saved[1])
    assert resumed.rebase_lr(4e-4) == 1e-3 and resumed.rebase_lr(4e-4) is None
    lrs = []
    for _ in range(5, 12):
        lrs.append(resumed.optimizer.param_groups[0]["lr"])
        resumed.optimizer.step()
        resumed.scheduler.step()
    assert lrs == pytest.approx(alignkit_lrs(new)[5:], rel=1e-12, abs=0)
