"""The Trainer callbacks of a run: live progress and the non-finite-loss stop, the run's record as it trains
(metrics.jsonl, the checkpoint inventory, the loss-spike watchdog), evaluations into the evaluation record, and the
terminal's progress bar."""

from __future__ import annotations

import math
from pathlib import Path

from sftop_trainer.checkpoints import CHECKPOINTS, inventory
from sftop_trainer.config import TrainerConfig
from sftop_trainer.errors import LossNotFinite, LossSpike
from sftop_trainer.history import MetricHistory
from sftop_trainer.progress import Progress, emit


def progress_callback(progress: Progress, best: bool = False):
    """Live progress; `best`: the last step is evaluated and saved like any other, to compete for the result."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            progress.update(phase="Training", totalSteps=state.max_steps, step=state.global_step)

        def on_step_end(self, args, state, control, **kw):
            progress.step(state.global_step, state.max_steps, state.epoch, state.num_input_tokens_seen)
            if state.global_step >= state.max_steps:
                control.should_log = True  # the last step's loss, whatever loggingSteps is
                if best:
                    control.should_evaluate = control.should_save = True
                else:
                    control.should_evaluate = False  # the run evaluates once training is over (not in its runtime)

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            loss = logs.get("loss")
            if loss is not None and not math.isfinite(loss):
                raise LossNotFinite(f"the training loss became {loss} at step {state.global_step}; lower the "
                                    f"learning rate (training.learningRate) or check the data")
            if "eval_loss" in logs:
                progress.update(evalLoss=logs["eval_loss"], exactMatch=logs.get("eval_exact_match"))
            if loss is not None:
                progress.update(loss=round(loss, 6), learningRate=logs.get("learning_rate"))
                emit("progress", **progress.snapshot())

    return ProgressCallback()


class LossSpikeWatch:
    """training.lossWatchdog: a logged loss above factor × the lowest logged so far, `logs` times in a row."""

    def __init__(self, factor: float, logs: int):
        self.factor, self.logs = factor, logs
        self.lowest: float | None = None
        self.high: list[tuple[int, float]] = []  # (step, loss) of the spike so far

    def observe(self, step: int, loss: float) -> str | None:
        """The reason to stop, once the spike lasted `logs` logs."""
        if self.lowest is not None and loss > self.factor * self.lowest:
            self.high.append((step, loss))
            if len(self.high) >= self.logs:
                first = self.high[0][0]
                return (f"the training loss spiked at step {first} and stayed above {self.factor:g} × its lowest "
                        f"({self.lowest:.4g}) for {len(self.high)} logged steps, reaching {loss:.4g} at step {step}")
            return None
        self.high = []
        self.lowest = loss if self.lowest is None else min(self.lowest, loss)
        return None


def record_callback(cfg: TrainerConfig, progress: Progress, out: Path):
    """The run's record as it trains: metrics.jsonl at each log, the checkpoint inventory at each save, the loss
    watchdog (training.lossWatchdog)."""
    from transformers import TrainerCallback

    metrics = MetricHistory(out)
    wd = cfg.training.loss_watchdog
    watch = LossSpikeWatch(wd.factor, wd.logs) if wd is not None else None

    class RecordCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if not logs:
                return
            if state.is_world_process_zero:
                metrics.observe(state.global_step, state.epoch, state.num_input_tokens_seen, logs)
            # Every process sees the same logged loss (averaged over them): all stop at the same step.
            loss = logs.get("loss")
            if watch is not None and isinstance(loss, (int, float)) and math.isfinite(loss):
                reason = watch.observe(state.global_step, loss)
                if reason:
                    before = [c for c in inventory(out / CHECKPOINTS)
                              if c["complete"] and c["step"] < watch.high[0][0]]
                    kept = (f"{before[-1]['path']}, saved before the spike, is kept (warmStart.checkpoint: "
                            f"{before[-1]['step']} continues from it)") if before else \
                        "no checkpoint was saved before the spike"
                    raise LossSpike(f"{reason}; lower training.learningRate or check the data. {kept}")

        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                progress.update(checkpoints=inventory(out / CHECKPOINTS, state.best_model_checkpoint))

    return RecordCallback()


def evaluation_callback(record):
    """Each evaluation's metrics into the run's evaluation record (an evaluate.EvaluationRecord), at the step whose
    weights were evaluated."""
    from transformers import TrainerCallback

    class EvaluationCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "eval_loss" in logs:
                step = record.step_override if record.step_override is not None else state.global_step
                record.observe(step, logs)

    return EvaluationCallback()


def quiet_bar():
    """transformers' progress bar, with the latest loss on the bar instead of a printed dict per log."""
    from transformers import ProgressCallback

    class QuietBar(ProgressCallback):
        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kw):
            pass  # evaluation is a few seconds: no second bar under the training one

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)

    return QuietBar()
