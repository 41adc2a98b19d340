"""A tiny PyTorch Lightning training that logs through ``RelayLogger`` (tests/e2e/test_frameworks.py).

Random tensors, a two-layer model, two epochs, a ``ModelCheckpoint`` on ``val_loss`` with
``save_last``, Lightning's own ``CSVLogger`` beside the relay's (the record of what Lightning
logged), an image through ``logger.experiment.logger``, and a ``trainer.validate`` after the fit.
Writes ``--result`` (JSON): the run id, the checkpoints, the CSV file, and each relay hook's
slowest call in seconds.

``--flavour pytorch_lightning`` trains with ``pytorch_lightning``'s Trainer instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hook_timing import slowest_into, time_methods
from torch.utils.data import DataLoader, TensorDataset

from producer.integrations.lightning import RelayLogger

HOOKS = ("log_hyperparams", "log_metrics", "after_save_checkpoint", "finalize")
slowest: dict[str, float] = {}


time_methods(RelayLogger, HOOKS, slowest_into(slowest))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--flavour", choices=("lightning", "pytorch_lightning"), default="lightning")
    parser.add_argument("--log-model", default="true")
    opts = parser.parse_args()
    if opts.flavour == "lightning":
        import lightning as pl
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.loggers import CSVLogger
    else:
        import pytorch_lightning as pl  # type: ignore[no-redef]
        from pytorch_lightning.callbacks import ModelCheckpoint  # type: ignore[assignment]
        from pytorch_lightning.loggers import CSVLogger  # type: ignore[assignment]

    class Net(pl.LightningModule):
        def __init__(
            self, lr: float = 0.05, hidden: int = 8, optimizer: dict[str, Any] | None = None
        ) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.hidden = torch.nn.Linear(4, hidden)
            self.out = torch.nn.Linear(hidden, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.hidden(x)))

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self(x), y)
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch: Any, _: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))
            self.log("val/mae", torch.nn.functional.l1_loss(self(x), y))

        def on_validation_epoch_end(self) -> None:
            run = self.loggers[0].experiment
            picture = np.full((8, 8, 3), self.current_epoch * 40, dtype=np.uint8)
            run.logger.report_image("samples", "val", self.global_step, image=picture)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    log_model: Any = {"true": True, "false": False, "all": "all"}[opts.log_model]
    relay = RelayLogger(project="frameworks", name="lightning", log_model=log_model, tags=["e2e"])
    csv = CSVLogger(str(opts.root / "csv"), name="lightning")
    checkpoint = ModelCheckpoint(monitor="val_loss", save_top_k=1, save_last=True)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=[relay, csv],
        callbacks=[checkpoint],
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(opts.root),
        accelerator="cpu",
    )
    model = Net(optimizer={"name": "sgd", "momentum": 0.0})
    trainer.fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=16))
    trainer.validate(model, DataLoader(data, batch_size=16), verbose=False)
    csv.save()
    opts.result.write_text(
        json.dumps(
            {
                "run": relay.version,
                "best": checkpoint.best_model_path,
                "last": checkpoint.last_model_path,
                "best_score": float(checkpoint.best_model_score),
                "csv": str(Path(csv.log_dir) / "metrics.csv"),
                "checkpoint_dir": str(Path(checkpoint.dirpath)),
                "slowest": slowest,
            }
        )
    )


if __name__ == "__main__":
    main()
