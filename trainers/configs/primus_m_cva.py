# Primus-M (ViT, 8³ tokens) at 160³, batch 4 per GPU, lr 3e-4 as nnssl's Primus pretraining.
# torchrun --nproc_per_node N -m trainers.cva --store STORE --out runs/primus_m --config trainers/configs/primus_m_cva.py
arch = "primus-m"
patch_size = [160]
batch_size = 4
recon = "mae"
consistency = "cva"
contrastive = True
drop_path = 0.2
lr = 3e-4
warmup_steps = 7500      # nnssl: 50 warm-up epochs of 150 at 250 steps per epoch
steps = 150 * 250
ckpt_every = 1000
log_every = 10
num_workers = 6
