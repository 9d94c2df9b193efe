"""The audit: which latent concepts separate chosen from rejected responses, where, how strongly.

pool.py      run model + SAE over responses; sparse per-token latents, max/mean pooling (resumable)
stats.py     pair statistics over Δ = A(y⁺) − A(y⁻): effect sizes, bootstrap CIs, split-half, BH q-values
embed.py     prompt embedders for topics (all-MiniLM by default, or the model's own residual)
topics.py    prompt topics (k-means / Leiden / a data column) named by class-based TF-IDF
graph.py     kNN similarity graphs and Leiden (scikit-network; leidenalg optional)
concepts.py  Leiden concept clusters of SAE features and their standardised scores c
rows.py      the (topic, cluster) table with predicted directions
labels.py    offline and LLM concept labels over readable units, scored by held-out detection
lens.py      the logit lens of each concept's decoder direction (its top output tokens)
run.py       the pipeline, writing the audit folder; report.py renders report.html from it
folder.py    the audit folder's file names and columns, and its one reader (AuditFolder, check_data)
"""
