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
warmup_steps = 2500     # 10 nnssl epochs
steps = 250 * 250        # the CVA phase: 250 epochs of nnssl's 250 iterations (after 1000 MAE epochs)
ckpt_every = 1000
log_every = 10
num_workers = 6
