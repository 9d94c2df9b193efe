"""`ConceptMonitorCallback`: the monitor as a transformers `TrainerCallback` (TRL's DPOTrainer,
GRPOTrainer, SFTTrainer, any `transformers.Trainer`).

    trainer = DPOTrainer(model=..., args=DPOConfig(output_dir="runs/trl"), ...)
    ConceptMonitorCallback.attach(trainer, ConceptMonitor("runs/audit", "prompts.jsonl", every=10))
    trainer.train()      # trainer.state.log_history gains monitor/<metric> rows every 10 steps

A point is measured at the start of training (step 0, or the resumed step) and after every
`every` optimizer steps. Its values reach the log history and every reporter (TensorBoard, W&B,
CSV …) through `transformers.Trainer.log` itself — called from `on_step_end`, because `on_log`
runs after `Trainer.log` has already appended its row to `state.log_history`. The base class's
`log` is called, not the trainer's own: TRL's trainers override `log` to flush their averaged
training metrics into whatever is logged, which a monitor row must not take. The monitor's files
go to `args.output_dir` (monitor.jsonl, monitor.html) unless `monitor.start` was called first.
`stop_on_alarm`: training stops at the next checkpoint save after an alarm (`control.should_training_stop`).
"""

from __future__ import annotations

import logging

from transformers import Trainer, TrainerCallback

from anatomist.monitor.core import ConceptMonitor, log_values

log = logging.getLogger(__name__)


class ConceptMonitorCallback(TrainerCallback):
    def __init__(self, monitor: ConceptMonitor, trainer: Trainer | None = None):
        self.monitor, self.trainer = monitor, trainer

    @classmethod
    def attach(cls, trainer: Trainer, monitor: ConceptMonitor) -> ConceptMonitorCallback:
        """Create the callback bound to `trainer` and add it."""
        cb = cls(monitor, trainer)
        trainer.add_callback(cb)
        return cb

    def _measure(self, state, control, model, tokenizer) -> None:
        row = self.monitor.measure(model, tokenizer, state.global_step)
        values = log_values(row)
        if self.trainer is not None:
            # CallbackHandler.on_log clears control.should_log: keep the trainer's own log of this step
            should_log = control.should_log
            Trainer.log(self.trainer, values)  # the base method on purpose: see the module docstring
            control.should_log = should_log
        else:  # not attached: the history still gets the row, reporters do not
            state.log_history.append({**values, "step": state.global_step})

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kw):
        if self.monitor.folder is None:
            self.monitor.start(args.output_dir, state.global_step)
        else:
            self.monitor.start(self.monitor.folder, state.global_step)
        self._tokenizer = processing_class if processing_class is not None else kw.get("tokenizer")
        if self.monitor.due(state.global_step, state.max_steps):
            self._measure(state, control, model, self._tokenizer)

    def on_step_end(self, args, state, control, model=None, **kw):
        if self.monitor.due(state.global_step, state.max_steps):
            self._measure(state, control, model, self._tokenizer)
        if self.monitor.stop_on_alarm and self.monitor.alarm_fired and control.should_save:
            log.warning("monitor: an alarm fired; stopping at this checkpoint (step %d)", state.global_step)
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kw):
        self.monitor.finish()
