"""KFP components for docsort: each body imports docsort and makes one stage call.

One module per concern, like the stage packages: ``data`` (sample data, data
version, prepare), ``train`` (a member, the out-of-fold report), ``predict``,
``ensemble`` (candidates, candidate specs re-run), ``review`` (hard-case
comparison, error report, submission), ``sweep``. On a cluster a body runs in
the docsort image; locally ``kfp.local.SubprocessRunner(use_venv=False)`` runs it
with the installed package. Hydra overrides travel as one space-separated
string, e.g. ``"model=resnet18 train.epochs=3"``. ``graph`` holds task groups
several pipelines share, ``k8s`` every Kubernetes task setting (GPU,
tolerations, secrets, /dev/shm, retries, caching), ``artifacts`` the metrics a
component logs from a stage's result.
"""
