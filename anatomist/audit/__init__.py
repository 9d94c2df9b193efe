"""The audit: which latent concepts separate chosen from rejected responses, where, how strongly.

pool.py      run model + SAE over responses; sparse per-token latents, max/mean pooling (resumable)
stats.py     pair statistics over Δ = A(y⁺) − A(y⁻): effect sizes, bootstrap CIs, split-half, BH q-values
embed.py     prompt embedders for topics (the model's own residual, or all-MiniLM)
topics.py    prompt topics (k-means / Leiden / a data column) with offline labels
graph.py     kNN similarity graphs and Leiden (scikit-network; leidenalg optional)
concepts.py  Leiden concept clusters of SAE features and their standardised scores c
rows.py      the (topic, cluster) table with predicted directions
labels.py    offline and LLM concept labels, scored by held-out detection
run.py       the pipeline, writing the audit folder; report.py renders report.html from it
folder.py    the audit folder's file names and columns, and its one reader (AuditFolder, check_data)
"""
