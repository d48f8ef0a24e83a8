# ResEnc-L, the CVA paper's best row (MAE + CVA + contrastive) at 128³, batch 4 per GPU.
# torchrun --nproc_per_node N -m trainers.cva --store STORE --out runs/resenc_l --config trainers/configs/resenc_l_cva.py
arch = "resenc-l"
patch_size = [128]
batch_size = 4
recon = "mae"
consistency = "cva"
contrastive = True
recon_weight = 5.0
consistency_weight = 1.0
contrastive_weight = 0.1
lr = 3e-4
warmup_steps = 2500
steps = 250_000          # 250 epochs × 1000 steps, as the reference's fine-tuning phase
ckpt_every = 1000
log_every = 10
num_workers = 6
