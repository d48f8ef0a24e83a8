# A CVA run that fits a laptop CPU: tiny residual U-Net, 32³ views, small heads.
# python -m trainers.cva --store STORE --out runs/tiny --config trainers/configs/tiny_cpu.py
arch = "tiny"
patch_size = [32]
batch_size = 2
mask_block = 8          # 4³ blocks per view, 48 of 64 hidden at ratio 0.75
pool_size = 8
align_size = 4
proj_dim = 256
steps = 200
warmup_steps = 10
lr = 1e-3
ckpt_every = 50
num_workers = 0
device = "cpu"
