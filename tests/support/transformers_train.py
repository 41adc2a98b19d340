"""A tiny Hugging Face ``Trainer`` run that logs through ``RelayCallback`` (tests/e2e/test_frameworks.py).

A BERT classifier built from a config made here (randomly initialised: nothing is downloaded) on a
generated dataset, two epochs, an evaluation and a checkpoint each epoch, then one more
``trainer.evaluate()``. Writes ``--result`` (JSON): the run id, ``trainer.state.log_history``
(what the Trainer logged), ``args.to_dict()``, the model's config, the checkpoints saved, and
each relay hook's slowest call in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from hook_timing import slowest_into, time_methods
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from producer.integrations.transformers import RelayCallback

HOOKS = ("on_train_begin", "on_log", "on_evaluate", "on_save", "on_train_end")
slowest: dict[str, float] = {}


time_methods(RelayCallback, HOOKS, slowest_into(slowest))


class Generated(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Token sequences whose label is whether token 7 occurs: learnable, and the same every run."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 30, (n, 12), generator=g)
        self.labels = (self.ids == 7).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(12, dtype=torch.long),
            "labels": self.labels[i],
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--logger", choices=("relay", "clearml", "none"), default="relay")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--fail", action="store_true", help="raise after training, before the result")
    opts = parser.parse_args()
    config = BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    args = TrainingArguments(
        output_dir=str(opts.output),
        num_train_epochs=opts.epochs,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=5e-3,
        logging_steps=2,
        eval_strategy="epoch",
        save_strategy="epoch",
        report_to="clearml" if opts.logger == "clearml" else "none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    callback = RelayCallback(project="frameworks", name="transformers", log_model=True, tags=["e2e"])
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Generated(opts.examples, 1),
        eval_dataset=Generated(32, 2),
        callbacks=[callback] if opts.logger == "relay" else [],
    )
    trainer.train()
    run = callback.run
    if opts.fail:
        opts.result.write_text(json.dumps({"run": run.id if run is not None else None}))
        raise RuntimeError("stopped on purpose after training")
    trainer.evaluate()
    opts.result.write_text(
        json.dumps(
            {
                "run": run.id if run is not None else None,
                "log_history": trainer.state.log_history,
                "args": args.to_dict(),
                "config": model.config.to_dict(),
                "checkpoints": sorted(p.name for p in opts.output.glob("checkpoint-*")),
                "slowest": slowest,
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()
