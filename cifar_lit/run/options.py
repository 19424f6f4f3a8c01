"""A run's options, as declared types: `RunOptions` here, `ModelOptions` (training/options.py) and `DataOptions`
(data/options.py), gathered in one `Options`.

Code reads `options.model.lr` or `options.run.max_epochs`. A flat dict of the config keys exists only at the YAML
and JSON edges (`as_dict`, `from_dict`): config.yaml, summary.json and the configuration a checkpoint carries keep
the flat keys they always had, so files of earlier runs still load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Union

from cifar_lit.data.options import DataOptions
from cifar_lit.hardware.plan import HardwarePlan, HardwareRequest
from cifar_lit.reliability.option_types import (
    Epochs,
    Fraction,
    NonNegativeInt,
    OpenUnitInterval,
    PositiveInt,
    Seed,
    from_values,
)
from cifar_lit.reliability.secrets import mask_secrets
from cifar_lit.reporting.loggers import LoggerName
from cifar_lit.training.options import ModelOptions

Precision = Literal["bf16-mixed", "16-mixed", "32-true", "32", "bf16-true", "64-true"]
# More keyword arguments of Lightning's Trainer (--trainer.gradient_clip_val 1.0): the Trainer's own open set, so a
# mapping, of plain values as YAML holds them.
TrainerArguments = dict[str, Union[bool, int, float, str, None]]
# Trainer arguments the run builds itself (its loggers, callbacks, plugins, checkpointing): not offered.
TRAINER_BUILT = ("logger", "callbacks", "plugins", "enable_checkpointing", "use_distributed_sampler", "inference_mode",
                 "benchmark", "default_root_dir", "model_registry", "enable_autolog_hparams", "enable_model_summary")
# Trainer arguments a flag of the project sets (--trainer.max_epochs is --max-epochs; given both ways: refused).
TRAINER_OWNED = {"accelerator": "accelerator", "strategy": "strategy", "devices": "devices", "num_nodes": "num_nodes",
                 "precision": "precision", "fast_dev_run": "fast_dev_run", "max_epochs": "max_epochs",
                 "limit_train_batches": "limit_train_batches", "num_sanity_val_steps": "sanity_val_steps",
                 "log_every_n_steps": "log_every_n_steps", "enable_progress_bar": "progress_bar",
                 "deterministic": "deterministic", "sync_batchnorm": "sync_batchnorm"}


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Options of the run itself, not of the network or the data.

    Args:
        gpus: GPUs to train on, 0 for the CPU; short for --accelerator gpu --devices N (default: one GPU if any,
            else CPU)
        accelerator: Lightning accelerator: auto, cpu, gpu, cuda, mps
        devices: devices per node (an int, or 'auto' for all)
        num_nodes: machines to train on (DDP)
        strategy: Lightning strategy, e.g. ddp (auto: ddp when there are several devices)
        sync_batchnorm: with several devices, compute batch-norm statistics over the global batch
        precision: numeric precision (default: the hardware plan decides: bf16-mixed where bf16 is native, 16-mixed
            on older GPUs, 32-true on the CPU)
        max_epochs: epochs at most; training stops earlier when --target-acc is reached
        limit_train_batches: train on at most this many batches per epoch (quick checks)
        target_acc: stop as soon as validation accuracy reaches this fraction (default: 0.85 on CIFAR-10; on other
            data sets the whole schedule runs)
        seed: seed of the network's initial weights (the data's order and augmentation use the same seed)
        resume: checkpoint to resume from, or 'last' for the newest last.ckpt under --logdir
        fast_dev_run: run one batch of training, validation and test, write nothing, then stop
        find_lr: run the LR range test (Lightning's Tuner.lr_find on a throwaway Trainer), write
            <logdir>/lr_find_N/lr_find.png and .json, print the suggested --lr, and stop
        lr_find_steps: steps of the LR range test
        dry_run: print the hardware plan (device, precision, compile, data placement, memory) and the run folder,
            then exit without reading data, compiling or writing anything
        print_config: print the run's configuration as YAML, every option resolved (the hardware plan's decisions
            in place), and exit: what the run's config.yaml would hold, a config file to run again with --config
        logdir: folder of the runs (version_N/ with TensorBoard logs and checkpoints)
        run_name: the run folder's name under --logdir (default: the next version_N); one that exists is refused
        deterministic: use deterministic algorithms (bit-identical reruns; slower on GPUs)
        ckpt_every_n_epochs: refresh last.ckpt after every N epochs; 0: only when training ends or a signal stops it
            (fewer writes, but a kill -9 then loses everything trained so far)
        ckpt_every_n_steps: also refresh last.ckpt every N training steps (0: only at epoch ends)
        best_weights_only: best-*.ckpt holds the weights only, not the optimizer state: half the bytes per save
            (resume from last.ckpt)
        log_every_n_steps: how often step-level scalars are written
        progress_bar: show Lightning's progress bar
        sanity_val_steps: validation batches run before training as a sanity check
        figures: draw the run's figures (accuracy and loss curves, confusion matrix, per-class accuracy, the augmented
            batch, the image grids); off: scalars, metrics.csv, checkpoints and summary.json only, the quickest runs
        grid_images: images in each misclassified/correct grid, spread over the classes (0: no grids)
        grid_every_n_epochs: log the validation grids every N epochs (0: only after testing)
        gradcam_layer: layer whose Grad-CAM maps are drawn over the grids' images (e.g. layer3, layer3.1, layer4);
            auto: the network's own choice (layer3 on the ResNets, else its last block with spatial output); null or
            none: no maps
        compile_cache: folder where torch.compile keeps its work between runs (a second run reuses it: a warm
            start); delete it to compile from scratch
        ema_decay: keep an exponential moving average of the weights with this decay and evaluate with it (e.g.
            0.999); off by default
        logger: where the run logs: tensorboard (the default), csv, mlflow, wandb, or several (--logger tensorboard
            mlflow); mlflow and wandb are extras (pip install -e ".[mlflow]")
        mlflow_uri: the MLflow tracking server or store (default: MLFLOW_TRACKING_URI, else an SQLite file beside the
            runs, <logdir>/mlflow.db); a password in it is never written to a file or a log
        trainer: more arguments of Lightning's Trainer, as `--trainer.NAME VALUE` or a config file's `trainer:`
            section (e.g. gradient_clip_val, accumulate_grad_batches, max_time, profiler, val_check_interval)
    """

    gpus: NonNegativeInt | None = None
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: PositiveInt = 1
    strategy: str = "auto"
    sync_batchnorm: bool = False
    precision: Precision | None = None
    max_epochs: Epochs = 10
    limit_train_batches: PositiveInt | None = None
    target_acc: Fraction | None = None
    seed: Seed = 0
    resume: str | None = None
    fast_dev_run: bool = False
    find_lr: bool = False
    lr_find_steps: PositiveInt = 100
    dry_run: bool = False
    print_config: bool = False
    logdir: str = "lightning_logs"
    run_name: str | None = None
    deterministic: bool = False
    ckpt_every_n_epochs: NonNegativeInt = 1
    ckpt_every_n_steps: NonNegativeInt = 0
    best_weights_only: bool = False
    log_every_n_steps: PositiveInt = 50
    progress_bar: bool = True
    sanity_val_steps: NonNegativeInt = 2
    figures: bool = True
    grid_images: NonNegativeInt = 30
    grid_every_n_epochs: NonNegativeInt = 1
    gradcam_layer: str | None = "auto"
    compile_cache: str = "~/.cache/cifar_lit/compile"
    ema_decay: OpenUnitInterval | None = None
    logger: list[LoggerName] = field(default_factory=lambda: ["tensorboard"])
    mlflow_uri: str | None = None
    trainer: TrainerArguments = field(default_factory=dict)


GROUPS = {"run": RunOptions, "model": ModelOptions, "data": DataOptions}  # in the order --help lists them


def option_names() -> list[str]:
    """Every config key once, in --help's order (a key two groups share, like batch_size, where it first comes)."""
    return list(dict.fromkeys(field.name for group in GROUPS.values() for field in fields(group)))


@dataclass(frozen=True, kw_only=True)
class Options:
    """Every option of a run, by group. A key two groups share (batch_size, seed, channels_last, compile) has one
    value in both. `given` holds the keys this command line set (by a flag or a config file it named), `flags` the
    ones set by a flag: a preset's `compile: true` is not `--compile`."""

    run: RunOptions = RunOptions()
    model: ModelOptions = ModelOptions()
    data: DataOptions = DataOptions()
    config: tuple[str, ...] = ()  # the --config files, in the order they were given
    given: frozenset[str] = frozenset()
    flags: frozenset[str] = frozenset()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, given: Iterable[str] = (), flags: Iterable[str] = ()
                  ) -> Options:
        """From flat config keys (a parsed command line, a config.yaml): each group takes the keys it has."""
        unknown = set(values) - set(option_names()) - {"config"}
        if unknown:
            raise KeyError(f"no option named {', '.join(sorted(unknown))}")
        return cls(run=from_values(RunOptions, values), model=from_values(ModelOptions, values),
                   data=from_values(DataOptions, values), config=tuple(str(p) for p in values.get("config") or ()),
                   given=frozenset(given), flags=frozenset(flags))

    @classmethod
    def of(cls, **values: Any) -> Options:
        """Options from keyword arguments, named as config keys (`Options.of(max_epochs=2, width=16)`): what a
        notebook or a sweep writes instead of a command line. The keys given count as set by the command."""
        return cls.from_dict(values, given=values)

    def as_dict(self) -> dict[str, Any]:
        """The flat config keys, as config.yaml and summary.json hold them."""
        return {"config": list(self.config), **asdict(self.run), **asdict(self.model), **asdict(self.data)}

    def record(self) -> dict[str, Any]:
        """The flat keys as config.yaml holds them: every option as it runs (the config files already applied, so
        not listed; --print-config not carried into a file that runs)."""
        record = self.replace(print_config=False, mlflow_uri=mask_secrets(self.run.mlflow_uri or "") or None).as_dict()
        del record["config"]
        return record

    def value(self, key: str) -> Any:
        """The value of config key `key`, from whichever group holds it."""
        for group in (self.run, self.model, self.data):
            if hasattr(group, key):
                return getattr(group, key)
        raise KeyError(f"no option named {key}")

    def replace(self, **changes: Any) -> Options:
        """A copy with `changes` (config keys) applied to every group that has the key; KeyError for an unknown one."""
        unknown = set(changes) - set(option_names())
        if unknown:
            raise KeyError(f"no option named {', '.join(sorted(unknown))}")

        def changed(group: Any) -> Any:
            names = {field.name for field in fields(group)}
            return dataclasses.replace(group, **{key: value for key, value in changes.items() if key in names})

        return dataclasses.replace(self, run=changed(self.run), model=changed(self.model), data=changed(self.data))

    def hardware_request(self, num_classes: int = 10) -> HardwareRequest:
        """What this run asks of the machine (`hardware.plan`)."""
        run, model, data = self.run, self.model, self.data
        return HardwareRequest(
            gpus=run.gpus, accelerator=run.accelerator, devices=run.devices, precision=run.precision,
            compile=model.compile, compile_is_a_flag="compile" in self.flags, channels_last=model.channels_last,
            fused_sgd=model.fused_sgd, data_on_device=data.data_on_device, model=model.model, width=model.width,
            num_classes=num_classes, batch_size=model.batch_size, eval_batch_size=data.eval_batch_size,
            ema=bool(run.ema_decay))

    def with_plan(self, hardware: HardwarePlan) -> Options:
        """The options with the plan's decisions in place of what they left to it."""
        return self.replace(**hardware.decided())
