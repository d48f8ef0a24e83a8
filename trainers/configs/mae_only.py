# Ablation row "MAE, no consistency, no contrastive" (the nnssl MAE baseline, Huber loss).
# Combine with an architecture config by giving the architecture flags on the command line.
recon = "mae"
consistency = "none"
contrastive = False
