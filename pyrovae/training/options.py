"""How a run trains: epochs, batches, learning rate, seed, device, and what it records on the way."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import UsageError, option as named
from ..core.options import Options, at_least, non_negative, option, positive
from ..evaluation.settings import whole
from .schedule import LR_SCHEDULES

NOISE = ("global", "per-row")   # where training draws its reparameterization noise


@dataclass
class TrainingOptions(Options):
    epochs: int = option(10, "Epochs in total (with --resume: the new total).", check=at_least(1))
    batch_size: int = option(128, "Datapoints per SVI step (the global batch of a torchrun run, shared by its "
                             "processes).", check=at_least(1))
    lr: float = option(1e-3, "Adam's learning rate for the model and the encoder.", check=positive)
    lr_decay: float = option(1.0, "Multiply the learning rate by this after every epoch (1: constant).",
                             check=lambda d: None if isinstance(d, (int, float)) and 0 < d <= 1 else "must lie in (0, 1]")
    adam_beta1: float = option(0.9, "Adam's decay of the gradient's running mean (Burda et al. 2016: 0.99).",
                               check=lambda b: None if isinstance(b, (int, float)) and 0 <= b < 1 else
                               "must lie in [0, 1)")
    adam_eps: float = option(1e-8, "Adam's epsilon, added to the root of the squared gradients' running mean (Burda "
                             "et al. 2016 and Cremer et al. 2018: 1e-4).", check=positive)
    lr_schedule: str = option("exponential", "exponential: lr times --lr-decay after every epoch; burda: Burda et "
                              "al. (2016)'s 8 stages, stage i at lr * 10^(-i/7) for the share 3^i / 3280 of the "
                              "budget (--epochs, or --minutes when it ends first).", choices=tuple(LR_SCHEDULES))
    minutes: float = option(0.0, "Stop after the epoch that passes this many minutes of wall time (0: no limit); "
                            "with --resume, of the whole run (its earlier epochs count), as --epochs is its total.",
                            check=non_negative("", "0: no budget"))
    patience: int = option(0, "Stop once the validation ELBO has not improved for this many epochs (early "
                           "stopping; needs --validation); 0: train all --epochs.",
                           check=whole(0))
    seed: int = option(0, "Seeds the weights, the data order and every draw.",
                       check=lambda s: None if isinstance(s, int) and 0 <= s < 2**32 else "must lie in [0, 2**32 - 1]")
    device: str = option("auto", "auto (CUDA when present), cpu, cuda or cuda:N.", cli=False)   # the CLI's shared --device
    noise: str = option("global", "Where training draws its reparameterization noise: torch's generator, or seeded per "
                        "(epoch, step, row of the batch), so that a run gives the same numbers in any number of "
                        "processes (what torchrun runs use).", choices=NOISE)
    eval_train_points: int = option(2_000, "Train ELBO each epoch on this many training points.", check=at_least(1),
                                    cli=False)
    tensorboard: bool = option(False, "Also write TensorBoard event files to RUN_DIR/tensorboard (scalars every epoch, "
                               "image grids at the end); needs pip install 'pyrovae[tensorboard]'.", flag=True,
                               secondary=None)
    curves_every: float = option(30.0, "Redraw RUN_DIR/curves.png after an epoch once this many seconds have passed "
                                 "since the last drawing (a drawing takes about a second); 0: after every epoch. "
                                 "Always drawn at the end.", check=non_negative("seconds", "0: every epoch"))

    def check(self) -> None:
        if not LR_SCHEDULES[self.lr_schedule].reads_lr_decay and self.lr_decay != 1.0:
            raise UsageError(f"{named('lr_schedule', self.lr_schedule)} sets every epoch's learning rate itself; drop "
                             f"{named('lr_decay', self.lr_decay)} or use {named('lr_schedule', 'exponential')}")
