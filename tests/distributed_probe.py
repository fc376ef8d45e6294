"""``reslab train`` with two probes for the distributed equivalence tests, run as a script
(alone or under torchrun):

- the initial weights are saved to ``$RESLAB_PROBE_INIT`` (rank 0), so a test can measure
  a difference against the size of the update;
- ``$RESLAB_PLANT`` plants a bug the tests must catch: ``gradients-not-averaged`` (no DDP
  wrapper, so each rank steps on its own half batch) or ``batch-norm-not-synced`` (each
  rank normalizes by its own half batch's statistics).
"""

import os
import sys

import torch

import reslab.distributed as distributed
import reslab.train.loop as loop
from reslab.cli import main

_build_run_model = loop.build_run_model


def build_and_save_init(config, bundle, device, env):
    model, meta = _build_run_model(config, bundle, device, env)
    if env.is_main:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, os.environ["RESLAB_PROBE_INIT"])
    return model, meta


loop.build_run_model = build_and_save_init
plant = os.environ.get("RESLAB_PLANT", "")
if plant == "gradients-not-averaged":
    loop.DistributedDataParallel = lambda model, device_ids=None: model
elif plant == "batch-norm-not-synced":
    distributed.convert_sync_batchnorm = lambda model, device: model
elif plant:
    sys.exit(f"unknown plant {plant!r}")

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
