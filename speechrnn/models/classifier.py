"""``RNNClassifier``: the LightningModule that trains a :class:`SequenceClassifierNet`."""

from __future__ import annotations

import math
import os
from typing import Any, Literal, get_args

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection
from torchmetrics.classification import MulticlassConfusionMatrix

from speechrnn.errors import ConfigError
from speechrnn.io import checkpoint_errors
from speechrnn.models.network import SequenceClassifierNet
from speechrnn.padding import PADDED_CLASS, lengths_mask

Task = Literal["classification", "regression", "frame_classification", "frame_regression"]
TASKS: tuple[str, ...] = get_args(Task)


def is_per_step(task: str) -> bool:
    """Whether ``task`` has one output per time step (``frame_*``) rather than one per sequence."""
    return task.startswith("frame_")


def is_classification(task: str) -> bool:
    return task in ("classification", "frame_classification")


Scheduler = Literal["onecycle", "cosine", "none"]
DEFAULT_LABEL_SMOOTHING = 0.1
"""Label smoothing of whole-sequence classifiers unless given."""


def output_activation(outputs: torch.Tensor, task: str) -> torch.Tensor:
    """Outputs as the model reports them: class probabilities (softmax, float32) for
    classification, the raw float32 outputs for regression."""
    outputs = outputs.float()
    return outputs.softmax(-1) if is_classification(task) else outputs


def confusion_scores(matrix: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy and macro-F1 of a confusion matrix (rows true, columns predicted), as torchmetrics'
    ``MulticlassAccuracy(average="micro")`` and ``MulticlassF1Score(average="macro")`` give them:
    classes never true nor predicted are left out of the macro average."""
    matrix = matrix.double()
    hits, total = matrix.diagonal(), matrix.sum()
    wrong = matrix.sum(0) + matrix.sum(1) - 2 * hits  # false positives + false negatives
    seen = hits + wrong > 0
    f1 = (2 * hits / (2 * hits + wrong).clamp_min(1))[seen]
    zero = matrix.new_zeros(())
    return {
        "acc": (hits.sum() / total if total > 0 else zero).float(),
        "f1": (f1.mean() if f1.numel() else zero).float(),
    }


class RunningLoss:
    """The training loss summed on the device, weighted by batch size: the mean since the last
    logged step and over the epoch are read only when logged, so training never waits for them."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.epoch_sum: torch.Tensor | None = None
        self.interval_sum: torch.Tensor | None = None
        self.count = self.interval_count = 0

    def add(self, loss: torch.Tensor, batch_size: int) -> None:
        weighted = loss.float() * batch_size
        self.epoch_sum = weighted if self.epoch_sum is None else self.epoch_sum + weighted
        self.interval_sum = weighted if self.interval_sum is None else self.interval_sum + weighted
        self.count += batch_size
        self.interval_count += batch_size

    def interval_mean(self) -> torch.Tensor:
        """Mean loss per example since the last call (then starts a new interval)."""
        assert self.interval_sum is not None
        mean = self.interval_sum / self.interval_count
        self.interval_sum, self.interval_count = None, 0
        return mean

    def epoch_mean(self) -> torch.Tensor:
        assert self.epoch_sum is not None
        return self.epoch_sum / self.count


class RNNClassifier(pl.LightningModule):
    """Recurrent sequence classifier (or many-to-one regressor) with its loss, metrics and optimiser.

    ``model(features, lengths) -> logits (batch, num_classes)`` with ``features (batch, time,
    input_size)`` and ``lengths (batch,)`` int64 on the CPU. Checkpoints carry ``data_config``
    (label names, feature settings, normalisation statistics), so a checkpoint alone can classify
    a new recording (see :mod:`speechrnn.inference`).
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        dropout: float = 0.2,
        task: Task = "classification",
        lr: float = 3e-3,
        weight_decay: float = 0.01,
        label_smoothing: float | None = None,
        class_weights: list[float] | None = None,
        scheduler: Scheduler = "onecycle",
        warmup_fraction: float = 0.1,
        class_names: list[str] | None = None,
        tbptt_steps: int | None = None,
        **net: Any,
    ) -> None:
        """
        Args:
            input_size: Feature size per frame (linked from the DataModule's ``feature_dim``).
            num_classes: Number of classes (linked from the DataModule); outputs for regression.
            dropout: Dropout between recurrent layers and before the head.
            task: ``classification`` (cross-entropy) or ``regression`` (mean squared error) of
                whole sequences; ``frame_classification`` / ``frame_regression`` give one output
                per time step, with the loss and metrics over valid frames only (linked from the
                DataModule's ``task``).
            lr: Peak learning rate of AdamW.
            weight_decay: AdamW weight decay (not applied to biases and norms).
            label_smoothing: Cross-entropy label smoothing; None: 0.1 for whole-sequence classification
                (the recipes' value: a model trained on few voices is less overconfident on new ones)
                and 0 for per-step tasks, whose per-step probabilities are scored as bits per step.
            class_weights: Optional per-class loss weights.
            scheduler: Learning-rate schedule per step: ``onecycle``, ``cosine`` (linear warm-up
                then cosine decay) or ``none``.
            warmup_fraction: Fraction of training steps spent warming up.
            class_names: Label names in class-index order (linked from the DataModule).
            tbptt_steps: Truncated backpropagation through time for per-step tasks: training reads
                each batch in chunks of this many steps, carrying the recurrent state from chunk to
                chunk but detaching it, so no gradient flows across a chunk boundary (one optimiser
                step per batch). Needs a unidirectional model. None: through the whole sequence.
            **net: The network's architecture (``cell``, ``hidden_size``, ``num_layers``,
                ``bidirectional``, ``pooling``, ``input_norm``, ``packed``, ``fused``): see
                :class:`~speechrnn.models.network.SequenceClassifierNet`.
        """
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if scheduler not in ("onecycle", "cosine", "none"):
            raise ValueError(f"scheduler must be onecycle, cosine or none, got {scheduler!r}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights has {len(class_weights)} entries for {num_classes} classes")
        if tbptt_steps is not None and (tbptt_steps < 1 or not is_per_step(task) or net.get("bidirectional", True)):
            raise ValueError(
                f"tbptt_steps={tbptt_steps} needs a per-step task (frame_*), a unidirectional model "
                "(--model.bidirectional false) and a value >= 1"
            )
        if label_smoothing is None:
            label_smoothing = DEFAULT_LABEL_SMOOTHING if task == "classification" else 0.0
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters()
        self.hparams.label_smoothing = label_smoothing
        self.net = SequenceClassifierNet(input_size, num_classes, dropout=dropout, per_step=is_per_step(task), **net)
        self.data_config: dict[str, Any] = {"class_names": class_names}
        if class_weights is not None:
            self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32))
        else:
            self.class_weights = None
        self._train_loss = RunningLoss()
        self.train_metrics = self._make_metrics("train")
        self.val_metrics = self._make_metrics("val")
        self.test_metrics = self._make_metrics("test")

    def __setattr__(self, name: str, value: Any) -> None:
        """``nn.Module``'s, except for the name of the running hook, which the Trainer sets around
        every hook it calls (about 50 times a training step) and which is never a tensor or module:
        stored directly, it skips ``nn.Module``'s parameter, buffer and module checks."""
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, map_location: Any = "cpu") -> RNNClassifier:
        """The model of a checkpoint written by ``python -m speechrnn.fit``, loaded with
        ``weights_only=True`` (nothing in the file runs); a file that is not one gets an error naming it."""
        with checkpoint_errors(path):
            return cls.load_from_checkpoint(path, map_location=map_location, weights_only=True)

    def _make_metrics(self, stage: str) -> Metric | MetricCollection:
        """The stage's metric state, updated every step on the device and read once an epoch: for
        classification one confusion matrix (accuracy and macro-F1 follow from it, :func:`confusion_scores`;
        one update a step costs a fifth of updating both metrics), for regression MAE and MSE. The
        targets are not checked again here (the loss has taken them): torchmetrics' argument checks
        read the targets back from the device on every update."""
        if is_classification(self.hparams.task):
            return MulticlassConfusionMatrix(self.hparams.num_classes, validate_args=False)
        return MetricCollection({"mae": MeanAbsoluteError(), "mse": MeanSquaredError()}, prefix=f"{stage}/")

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.net(features, lengths)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move the features and targets; ``lengths`` (batch[1]) stay on the CPU for packing, and the
        clip indices (batch[3]) for looking up each clip's speaker statistics and record: reading
        them back from a GPU would wait for all its queued work on every step."""
        if isinstance(batch, (tuple, list)) and len(batch) > 1:
            stay = (1, 3)
            moving = [item for position, item in enumerate(batch) if position not in stay]
            moved = iter(super().transfer_batch_to_device(moving, device, dataloader_idx))
            return tuple(item if position in stay else next(moved) for position, item in enumerate(batch))
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Mean loss over sequences, or, for per-step tasks, over the valid frames of the batch
        (padding never counts: class targets there are ``PADDED_CLASS``, values are masked)."""
        task = self.hparams.task
        if task == "regression":
            return F.mse_loss(outputs.float().squeeze(-1), targets.float().view(outputs.shape[0], -1).squeeze(-1))
        if task == "frame_regression":
            if lengths is None:
                raise ValueError("per-step regression needs the lengths")
            valid = lengths_mask(lengths, outputs.shape[1], outputs.device)
            return F.mse_loss(outputs.float()[valid], targets.float().view(*outputs.shape)[valid])
        logits = outputs.float().transpose(1, 2) if task == "frame_classification" else outputs.float()
        return F.cross_entropy(
            logits, targets, weight=self.class_weights, label_smoothing=self.hparams.label_smoothing,
            ignore_index=PADDED_CLASS,
        )  # fmt: skip

    def forward_truncated(self, features: torch.Tensor, lengths: torch.Tensor, steps: int) -> torch.Tensor:
        """Per-step outputs computed chunk by chunk (``steps`` frames each), the recurrent state
        carried across chunks and detached there: the same values as :meth:`forward`, with gradients
        truncated at every chunk boundary."""
        net = self.net
        x, states, encoded = net.input_norm(features), None, []
        for start in range(0, x.shape[1], steps):
            chunk = x[:, start : start + steps]
            # a sequence that has ended reads one padded frame: its outputs there are masked anyway
            chunk_lengths = (lengths.cpu() - start).clamp(1, chunk.shape[1])
            outputs, states = net.encoder(chunk, chunk_lengths, states=states, return_states=True)
            states = [tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach() for s in states]
            encoded.append(outputs)
        outputs = torch.cat(encoded, dim=1) * lengths_mask(lengths, x.shape[1], x.device).unsqueeze(-1)
        return net.head(net.dropout(outputs))

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        features, lengths, targets = batch[:3]
        steps = self.hparams.get("tbptt_steps")
        if stage == "train" and steps:
            outputs = self.forward_truncated(features, lengths, steps)
        else:
            outputs = self(features, lengths)
        loss = self.loss(outputs, targets, lengths)
        batch_size = features.shape[0]
        if stage == "train":
            self._train_loss.add(loss.detach(), batch_size)
            if self._logging_step():
                self.log("train/loss_step", self._train_loss.interval_mean(), on_step=True, prog_bar=True)
        else:
            self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=batch_size, sync_dist=True)
        metrics = getattr(self, f"{stage}_metrics")
        task = self.hparams.task
        if is_per_step(task):  # every valid frame is one example
            valid = lengths_mask(lengths, outputs.shape[1], outputs.device)
            outputs, targets = outputs[valid], targets.reshape(*outputs.shape[:2], -1)[valid]
            targets = targets.squeeze(-1) if task == "frame_classification" else targets
        if is_classification(task):
            metrics.update(outputs, targets)
        else:
            metrics.update(outputs.float().reshape(-1), targets.float().reshape(-1))
        return loss

    def _log_epoch_metrics(self, stage: str) -> None:
        """The stage's metrics over the epoch (synchronised across processes by torchmetrics), logged
        once: logging the metric objects every step costs Lightning about 1.5 ms a step on a CPU."""
        metrics = getattr(self, f"{stage}_metrics")
        if isinstance(metrics, MetricCollection):
            if not any(metric.update_called for metric in metrics.values()):
                return
            values = metrics.compute()
        else:
            if not metrics.update_called:
                return
            values = {f"{stage}/{name}": value for name, value in confusion_scores(metrics.compute()).items()}
        self.log_dict(values, prog_bar=stage != "train", sync_dist=True)
        metrics.reset()

    def _logging_step(self) -> bool:
        """Whether the logger writes this training step (every ``log_every_n_steps``): per-step values
        are computed and logged only then, so other steps never wait for the device."""
        connector = getattr(self.trainer, "_logger_connector", None)
        return connector is None or connector.should_update_logs

    def on_train_epoch_end(self) -> None:
        if self._train_loss.count:
            self.log("train/loss_epoch", self._train_loss.epoch_mean(), on_epoch=True, prog_bar=True)
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        features, lengths = batch[0], batch[1]
        outputs = self(features, lengths).float()
        result = {"outputs": output_activation(outputs, self.hparams.task)}
        if len(batch) > 3:
            result["indices"] = batch[3]
        return result

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the gradient norm before clipping, so exploding gradients are visible (on the steps the
        logger writes, the only ones where it would be seen). The norm stays on the device until the
        logger reads it (Lightning's ``grad_norm`` reads each parameter's norm back to the host)."""
        if not self._logging_step():
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads, 2.0), on_step=True, on_epoch=False)

    def configure_optimizers(self) -> Any:
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        if self.hparams.scheduler == "none":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(self.hparams.warmup_fraction * total))
        if self.hparams.scheduler == "onecycle" and total >= 4:  # OneCycleLR needs room for both phases
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=self.hparams.lr, total_steps=total, pct_start=min(0.5, max(2, warmup) / total)
            )
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "data_config"):
            self.data_config = datamodule.data_config

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["data_config"] = self.data_config
        checkpoint["rng_states"] = collect_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.data_config = checkpoint.get("data_config", self.data_config)
        self._resumed_rng_states = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        """Refuse a resumed run that plans more steps than its one-cycle schedule spans: the schedule
        cannot be stretched, and torch would fail at the first step past its end."""
        for config in self.trainer.lr_scheduler_configs:
            total = getattr(config.scheduler, "total_steps", None)
            planned = self.trainer.estimated_stepping_batches
            if isinstance(config.scheduler, torch.optim.lr_scheduler.OneCycleLR) and planned > total:
                raise ConfigError(
                    f"--ckpt_path: the checkpoint's one-cycle learning-rate schedule ends at step {total}, and this "
                    f"run would train to step {int(planned)}; resume with the interrupted run's --trainer.max_epochs "
                    "and --trainer.max_steps"
                )

    def on_train_epoch_start(self) -> None:
        """A new epoch's running loss; after a resume, continue the random streams (dropout) where the
        interrupted run left them, so the resumed run matches an uninterrupted one."""
        self._train_loss.reset()
        states = getattr(self, "_resumed_rng_states", None)
        if states is not None:
            restore_rng_states(states)
            self._resumed_rng_states = None

    @property
    def class_names(self) -> list[str]:
        names = self.data_config.get("class_names") or self.hparams.class_names
        return list(names) if names else [str(i) for i in range(self.hparams.num_classes)]


def collect_rng_states() -> dict[str, Any]:
    """torch's random states (dropout draws from them; batch order has its own seeded generator)."""
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class WarmupCosine:
    """Linear warm-up to 1, then cosine decay to 0 (a picklable LambdaLR factor)."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))
