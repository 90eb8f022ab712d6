"""The signals layer: everything the methods measure about rows with a model, shared by every method.

In the order a row travels:

* [`encoding`](encoding.py): rows → model inputs with answer-only labels; per-sample answer NLL;
* [`perplexity`](perplexity.py): answer-token perplexity (DataProphet's PPL; MM-GEN's filter);
* [`embeddings`](embeddings.py): Q / A / I field embeddings and their similarity (DataProphet's QSim / ASim / ISim);
* [`diversity`](diversity.py): k-means silhouette + normalized entropy (DataProphet's diversity);
* [`duplicates`](duplicates.py): near-duplicate groups of feature vectors, hashed and streamed (ICONS's dedup);
* [`warmup`](warmup.py): the LoRA warm-up that gradients are taken at (LESS / ICONS / CADC step 1);
* [`gradients`](gradients.py): exact per-sample LoRA gradients in one batched backward;
* [`projection`](projection.py): seeded, memory-bounded random projections;
* [`datastore`](datastore.py): resumable feature stores, one writer per file (safe on NFS);
* [`influence`](influence.py): per-task influence, streamed from a store;
* [`features`](features.py): the pipeline ICONS and CADC share (warm-up → features → stores), and its config.

Modules are imported on their own (`from mixwise.signals.perplexity import ...`): importing this package imports
nothing heavy.
"""
