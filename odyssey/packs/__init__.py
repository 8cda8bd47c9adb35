"""Trial packs: many trials of one search trained at once on one device, each still its own trial.

On the CPU a pack trains each member with its own model, through ``train_trial``'s code (bit
for bit the same trial as alone); on CUDA the members are stacked:

* :mod:`odyssey.packs.model` - members' weights stacked on a member axis, exact padding masks.
* :mod:`odyssey.packs.optim` - the vectorized Nesterov SGD step, per-member hyperparameters.
* :mod:`odyssey.packs.trainer` - :func:`train_pack` and the :class:`PackTrainer` engine (members
  join and leave at epoch ends).

Like :mod:`odyssey.train`, nothing here imports Ray or MLflow.
"""

from odyssey.packs.trainer import PackEvent, PackTrainer, check_pack, train_pack

__all__ = ["PackEvent", "PackTrainer", "check_pack", "train_pack"]
