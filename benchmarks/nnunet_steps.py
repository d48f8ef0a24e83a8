"""A few stock nnU-Net v2 training steps from our weights (run with the benchmark venv's python, not ours).

    nnUNet_raw=... nnUNet_preprocessed=... nnUNet_results=... \\
        /tmp/benchvenv/bin/python benchmarks/nnunet_steps.py 990 nnUNetPlans_openmind to_nnunet/pretrained_weights.pth 5

nnU-Net's own ``get_trainer_from_args`` (plain ``nnUNetTrainer``, CPU) and ``maybe_load_checkpoint`` (its
``load_pretrained_weights``), then ``on_train_start`` and N ``train_step`` calls: the loss per step and seconds.
"""

import sys
import time

import torch
from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

dataset, plans, weights, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
trainer = get_trainer_from_args(dataset, "3d_fullres", 0, "nnUNetTrainer", plans, device=torch.device("cpu"))
maybe_load_checkpoint(trainer, False, False, weights)  # initialises, then nnU-Net's load_pretrained_weights
trainer.on_train_start()
for step in range(steps):
    t0 = time.perf_counter()
    loss = trainer.train_step(next(trainer.dataloader_train))["loss"]
    print(f"step {step}: loss {float(loss):.4f} ({time.perf_counter() - t0:.2f} s)", flush=True)
trainer.on_train_end()
