"""The audit: which latent concepts separate chosen from rejected responses, where, how strongly.

stats.py  pair statistics over Δ = A(y⁺) − A(y⁻): effect sizes, bootstrap CIs, split-half, BH q-values
pool.py   run model + SAE over responses; max/mean-pooled latents per response (resumable)
"""
