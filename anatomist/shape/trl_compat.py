"""TRL 1.16's DPOTrainer, reading reference log-probs that the dataset already carries.

    from trl import DPOConfig
    from anatomist.shape.export import load_export
    from anatomist.shape.trl_compat import PrecomputedRefDPOTrainer

    args = DPOConfig(output_dir="out", beta=0.1, max_length=1024, precompute_ref_log_probs=True)
    trainer = PrecomputedRefDPOTrainer(model=model, args=args, train_dataset=load_export("ds"),
                                       processing_class=tokenizer)

With `precompute_ref_log_probs=True` TRL loads no reference model and its loss reads
`ref_chosen_logps` / `ref_rejected_logps` from each batch; the stock trainer, though, always
recomputes those columns first and then fails on the duplicates ("The table can't have
duplicated columns"). This subclass skips that step when both columns are present; everything
else is TRL's.
"""

from __future__ import annotations

from trl import DPOTrainer

from anatomist.errors import AnatomistError
from anatomist.shape.export import REF_COLUMNS


class PrecomputedRefDPOTrainer(DPOTrainer):
    def __init__(self, *args, **kwargs):
        config = kwargs.get("args", args[1] if len(args) > 1 else None)
        if config is None or not config.precompute_ref_log_probs:
            raise AnatomistError("PrecomputedRefDPOTrainer needs DPOConfig(precompute_ref_log_probs=True): without "
                                 "it TRL ignores the dataset's reference columns and runs a reference model")
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        if all(c in dataset.column_names for c in REF_COLUMNS):
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)
