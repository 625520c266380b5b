"""Running out of CUDA memory, injected on the CPU at a chosen step: the failure names the plan's estimate and what
would fit; with training.autoBatchSize the run retries in the same process with half the batch and twice the
accumulation from the latest checkpoint, and result.json says what it used."""

import gc
import weakref

import pytest
import torch
from sftop_trainer.__main__ import main
from trl import SFTTrainer


@pytest.fixture
def out_of_memory(monkeypatch):
    """Make every training step at or after `step` run out of memory while the batch is larger than `below`."""

    attempts = []  # (per-device batch, accumulation, the checkpoint each train() resumed from)
    trainers, alive = [], []  # a weak reference to each attempt's trainer; how many were alive at each start

    def inject(step: int, below: int):
        real_step, real_train = SFTTrainer.training_step, SFTTrainer.train

        def training_step(self, *args, **kw):
            if self.state.global_step >= step and self.args.per_device_train_batch_size > below:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            return real_step(self, *args, **kw)

        def train(self, resume_from_checkpoint=None, **kw):
            attempts.append((self.args.per_device_train_batch_size, self.args.gradient_accumulation_steps,
                             resume_from_checkpoint and resume_from_checkpoint.rsplit("/", 1)[-1]))
            gc.collect()
            alive.append(sum(t() is not None for t in trainers))  # earlier attempts' trainers still in memory
            trainers.append(weakref.ref(self))
            return real_train(self, resume_from_checkpoint=resume_from_checkpoint, **kw)

        monkeypatch.setattr(SFTTrainer, "training_step", training_step)
        monkeypatch.setattr(SFTTrainer, "train", train)
        return attempts, alive

    return inject


def test_running_out_of_memory_says_what_the_plan_expected_and_what_would_fit(train_config, train, out_of_memory):
    config = train_config(training={"perDeviceTrainBatchSize": 4, "gradientAccumulationSteps": 1})
    assert main(["--config", str(config), "--validate"]) == 0  # the plan the Validating phase leaves behind
    out_of_memory(step=5, below=0)
    run = train(config)
    assert run.code == 67 and run.message["reason"] == "CUDAOutOfMemory"
    message = run.message["message"]
    assert "at step 5 with 4 sequence(s) per GPU" in message and "the plan estimated" in message
    assert "training.perDeviceTrainBatchSize: 2 with gradientAccumulationSteps: 2" in message
    assert "training.autoBatchSize: true" in message
    assert run.result["batch"] == {"perDevice": 4, "accumulation": 1, "reducedAfterOOM": 0}


def test_auto_batch_size_halves_the_batch_and_resumes_from_the_latest_checkpoint(train_config, train, out_of_memory):
    attempts, alive = out_of_memory(step=5, below=1)  # only 1 sequence per GPU fits from step 5 on
    run = train(train_config(training={"perDeviceTrainBatchSize": 4, "gradientAccumulationSteps": 1,
                                       "autoBatchSize": True, "maxSteps": 8, "saveSteps": 4}))
    assert run.code == 0, run.message
    result = run.result
    assert result["steps"] == 8
    assert result["batch"] == {"perDevice": 1, "accumulation": 4, "reducedAfterOOM": 2}
    # the same effective batch each time, and each retry went on from checkpoint 4 (saved before step 5)
    assert attempts == [(4, 1, None), (2, 2, "checkpoint-4"), (1, 4, "checkpoint-4")]
    assert alive == [0, 0, 0], "a failed attempt's trainer (model, optimizer, gradients) is freed before the next"
    assert result["checkpoints"][-1]["step"] == 8


def test_auto_batch_size_gives_up_at_one_sequence(train_config, train, out_of_memory):
    out_of_memory(step=0, below=0)
    run = train(train_config(training={"perDeviceTrainBatchSize": 2, "autoBatchSize": True}))
    assert run.code == 67 and run.message["reason"] == "CUDAOutOfMemory"
    assert "halved the batch 1 time(s)" in run.message["message"]
    assert "a lower training.maxLength" in run.message["message"]
    assert run.result["batch"] == {"perDevice": 1, "accumulation": 2, "reducedAfterOOM": 1}
