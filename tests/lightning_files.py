"""Checkpoints written by pytorch_lightning itself, in the DEADiff key layout (test environment only).

`write_lightning_ckpt` trains a tiny LightningModule whose state_dict is a DEADiff state_dict (the keys of
tests/deadiff_fakes.py) for one step with a ModelCheckpoint callback and hyper-parameters from an
OmegaConf config, as LDM-style training does, and saves it with `Trainer.save_checkpoint`: the file
holds whatever this Lightning version writes (loops, callbacks, optimizer_states, lr_schedulers,
hyper_parameters, hparams_type). The learning rate is 0, so the saved weights are the given ones bit
for bit and the file must give the same result as the plain state_dict.

`as_lightning_1x` rewrites such a file with the records Lightning 1.x wrote instead (the ModelCheckpoint
class as the `callbacks` key, an AttributeDict of hyper-parameters, a numpy scalar best score).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

# An LDM-style training config, as DEADiff's training scripts keep it (OmegaConf).
CONFIG = {
    "model": {
        "base_learning_rate": 1.0e-05,
        "target": "deadiff.models.DEADiff",
        "params": {
            "linear_start": 0.00085,
            "linear_end": 0.012,
            "timesteps": 1000,
            "scale_factor": 0.18215,
            "qformer_config": {"num_query_token": 16, "freeze_vit": True},
            "unet_config": {
                "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                "params": {"channel_mult": [1, 2, 4, 4], "attention_resolutions": [4, 2, 1]},
            },
        },
    },
    "lightning": {"trainer": {"benchmark": True, "accumulate_grad_batches": 1}},
}
TRAINED = ("style_proj_layer.", "content_proj_layer.")  # what the tiny module trains (at learning rate 0)


def _lightning_module(state_dict: dict, config):
    import pytorch_lightning as pl

    class TinyDEADiff(pl.LightningModule):
        """Its state_dict() is exactly `state_dict`: one submodule per dotted key part."""

        def __init__(self, config):
            super().__init__()
            self.save_hyperparameters(config)
            for key, value in state_dict.items():
                *parts, leaf = key.split(".")
                module = self
                for part in parts:
                    if part not in module._modules:
                        module.add_module(part, torch.nn.Module())
                    module = module._modules[part]
                if value.is_floating_point():
                    module.register_parameter(
                        leaf, torch.nn.Parameter(value.clone(), requires_grad=key.startswith(TRAINED))
                    )
                else:
                    module.register_buffer(leaf, value.clone())

        def training_step(self, batch, index):
            trained = [p for p in self.parameters() if p.requires_grad]
            return sum(p.float().pow(2).sum() for p in trained) * batch[0].mean()

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=0.0)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 100))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    return TinyDEADiff(config)


def write_lightning_ckpt(path, state_dict: dict) -> Path:
    """Train the tiny module one step with pytorch_lightning and save the checkpoint at `path`."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    path = Path(path)
    work = Path(tempfile.mkdtemp(prefix="lightning-"))  # Lightning's own files stay out of models/
    quiet = [
        logging.getLogger(name)
        for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
    ]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = _lightning_module(state_dict, OmegaConf.create(CONFIG))
            batches = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 1)), batch_size=1)
            checkpoints = pl.callbacks.ModelCheckpoint(
                dirpath=work / "checkpoints", every_n_train_steps=1, save_last=True
            )
            trainer = pl.Trainer(
                max_steps=2,
                accelerator="cpu",
                devices=1,
                callbacks=[checkpoints],
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=work,
            )
            trainer.fit(module, batches)
            trainer.save_checkpoint(work / "saved.ckpt")
        shutil.move(str(work / "saved.ckpt"), path)
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
        shutil.rmtree(work, ignore_errors=True)
    return path


def as_lightning_1x(path) -> Path:
    """Rewrite our own Lightning file with Lightning 1.x's records (torch.load with pickles is fine here:
    the test wrote this file a moment ago)."""
    import numpy
    from lightning_fabric.utilities.data import AttributeDict
    from pytorch_lightning.callbacks import ModelCheckpoint

    path = Path(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    states = list(checkpoint["callbacks"].values())
    states[0]["best_model_score"] = numpy.float64(-4.0e-05)
    checkpoint["callbacks"] = {ModelCheckpoint: states[0]}
    checkpoint["hyper_parameters"] = AttributeDict(learning_rate=1.0e-05, ckpt_path=None, ignore_keys=[])
    checkpoint.pop("hparams_type", None)
    checkpoint["pytorch-lightning_version"] = "1.4.2"
    tmp = path.with_suffix(".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
    return path
