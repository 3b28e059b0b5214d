"""Cluster subcommands: ``docsort sweep``, ``docsort submit`` and ``docsort schedule``.

``submit`` sends a pipeline to Kubeflow Pipelines (it is not ``docsort
submission``, the stage that writes a submission CSV). ``sweep`` runs a search
space locally (Optuna) or on Katib, or prints the Katib Experiment.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from docsort.cli.args import add_command, add_prepared, exists
from docsort.core.errors import ConfigError, DocsortError

HOST_ENV = "KF_PIPELINES_ENDPOINT"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``sweep``, ``submit`` and ``schedule`` to the ``docsort`` parser."""
    p = add_command(
        sub,
        "sweep",
        "Hyperparameter sweep of `docsort train` over a search space: local Optuna study or Katib Experiment.",
        overrides=True,
    )
    add_prepared(
        p,
        "prepared data (`docsort prepare` output): folder or s3://bucket/prefix (Katib: s3:// only)",
        moved=True,
    )
    p.add_argument(
        "--space",
        default="default",
        help="search space: a name in conf/hpo (default, cpu_small, ...) or a YAML path",
    )
    p.add_argument(
        "--backend",
        choices=("local", "katib"),
        default=None,
        help="local (default) or katib; --dry-run implies katib",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the Katib Experiment YAML (for kubectl apply) and exit",
    )
    p.add_argument(
        "--trials",
        type=int,
        default=None,
        metavar="N",
        help="number of trials (default: the space's max_trial_count)",
    )
    p.add_argument(
        "--out",
        default="sweep-out",
        help="where trials.csv, best.json and trials/<trial>/ go (katib: an s3:// prefix keeps the trials' members)",
    )
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="local: trials run at once")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="local: stop starting trials after S seconds; katib: wait at most S seconds (default: the Experiment's worst case)",
    )
    p.add_argument(
        "--namespace",
        default="",
        help="katib: namespace of the Experiment and its trials (default: this pod's namespace)",
    )
    p.add_argument(
        "--name",
        default=None,
        help="katib: Experiment name (default: derived from the spec, so a re-run adopts it)",
    )
    p.add_argument(
        "--image",
        default=None,
        help="katib: trial image (default: the docsort image the space asks for)",
    )
    p.add_argument(
        "--gpu",
        type=int,
        default=None,
        metavar="N",
        help="katib: GPUs per trial node (default: the space's trial.gpu)",
    )
    p.add_argument(
        "--k8s-profile",
        default=None,
        metavar="NAME",
        help="katib: k8s profile for the trials' GPU pool and pull policy (conf/k8s)",
    )
    p.add_argument(
        "--kubeconfig",
        default=None,
        help="katib: kubeconfig file (default: in-cluster, then ~/.kube/config)",
    )
    p.set_defaults(func=_sweep)

    for name, help_text in (
        (
            "submit",
            "Compile a pipeline file and start a run on Kubeflow Pipelines (not `submission`, which writes a CSV).",
        ),
        (
            "schedule",
            "Compile a pipeline file and create a recurring run on Kubeflow Pipelines (6-field cron).",
        ),
    ):
        p = add_command(sub, name, help_text)
        p.add_argument(
            "pipeline", help="pipeline file (.py with one @dsl.pipeline, or compiled .yaml)"
        )
        p.add_argument(
            "--host",
            default=os.environ.get(HOST_ENV),
            help=f"KFP API URL, e.g. http://localhost:8888 (default: ${HOST_ENV})",
        )
        p.add_argument(
            "--experiment", default=None, help="KFP experiment name (created when missing)"
        )
        p.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="pipeline input; repeatable",
        )
        p.add_argument(
            "--namespace",
            default=None,
            help="Kubeflow profile namespace of the run (multi-user Kubeflow; default: the KFP "
            "client's own, from its context or the pod it runs in; single-user KFP: none)",
        )
        p.add_argument(
            "--service-account",
            default="docsort-pipeline",
            help="service account of the run's pods (k8s/base creates docsort-pipeline); '' = KFP's default",
        )
        add_compile_options(p)
        p.add_argument(
            "--no-cache",
            action="store_true",
            help="run every task, even those KFP could reuse from earlier runs",
        )
        if name == "submit":
            p.add_argument(
                "--run-name", default=None, help="run name (default: the file's name and the time)"
            )
            p.set_defaults(func=_submit)
        else:
            p.add_argument(
                "--cron",
                required=True,
                help='6 fields, seconds first: "0 0 2 * * *" = 02:00:00 daily',
            )
            p.add_argument(
                "--name",
                default=None,
                help="recurring run name (default: the pipeline file's name)",
            )
            p.add_argument(
                "--max-concurrency", type=int, default=1, help="runs at once at most (default 1)"
            )
            p.add_argument(
                "--catchup",
                action="store_true",
                help="also start the runs missed while the schedule was paused",
            )
            p.set_defaults(func=_schedule)


def _sweep(args: argparse.Namespace) -> int:
    backend = args.backend or ("katib" if args.dry_run else "local")
    if args.dry_run and backend != "katib":
        raise ConfigError("--dry-run prints the Katib Experiment; it needs --backend katib")
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    if backend == "local":  # Katib refuses a local folder itself: its trials read S3
        exists(args.prepared, "prepared folder")
    from docsort.core import storage
    from docsort.sweep import sweep

    overrides = list(args.overrides)
    if backend == "katib":
        from docsort.components import k8s

        if not storage.is_s3(args.prepared):
            raise DocsortError(
                f"Katib trials run in pods and read the prepared data from S3; give an s3:// URI, not {args.prepared!r}"
            )
        pod = k8s.trial_pod(k8s.load_profile(args.k8s_profile))
        common = dict(
            namespace=args.namespace,
            name=args.name,
            image=args.image,
            fixed_overrides=overrides,
            gpu=args.gpu,
            n_trials=args.trials,
            pod=pod,
            trials_uri=storage.join(args.out, "trials") if storage.is_s3(args.out) else None,
        )
        if args.dry_run:
            sys.stdout.write(sweep.dry_run_yaml(args.prepared, args.space, **common))
            return 0
        result = sweep.run_katib_sweep(
            args.prepared,
            args.space,
            args.out,
            timeout_s=args.timeout,
            kubeconfig=args.kubeconfig,
            **common,
        )
    else:
        prepared = args.prepared
        if storage.is_s3(prepared):  # once here, not in every trial
            prepared = str(storage.localize(prepared, Path(args.out) / ".docsort-download"))
        result = sweep.run_local_sweep(
            prepared, args.space, args.out, n_trials=args.trials, fixed_overrides=overrides,
            timeout_s=args.timeout, parallel=args.parallel,
        )  # fmt: skip
    states = result.trials["state"].value_counts().to_dict()
    print(
        f"best {result.metric}={result.value:.4f} ({result.best_trial}; {len(result.trials)} trials: "
        + ", ".join(f"{v} {k}" for k, v in sorted(states.items()))
        + ")"
    )
    print("best overrides: " + " ".join(result.overrides))
    print(f"trials table: {Path(args.out) / 'trials.csv'}")
    print(
        f"train it: docsort train --prepared {args.prepared} --out OUT "
        + " ".join(sweep.trial_overrides(sweep.load_space(args.space), overrides, result.overrides))
    )
    return 0


def add_compile_options(p: argparse.ArgumentParser) -> None:
    """``--k8s-profile`` and the image setting, shared by ``compile``, ``submit`` and ``schedule``."""
    p.add_argument(
        "--k8s-profile",
        default=None,
        metavar="NAME",
        help="Kubernetes task settings to compile with: a name in conf/k8s (default, cpu) or a YAML path",
    )
    p.add_argument(
        "--image-registry",
        default=None,
        metavar="REGISTRY",
        help="registry of the docsort images, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com "
        "(default: $DOCSORT_IMAGE_REGISTRY, then conf/images.yaml); skaffold's --default-repo "
        "takes the same value",
    )
    p.add_argument(
        "--image-tag",
        default=None,
        metavar="TAG",
        help="tag of the docsort images (default: $DOCSORT_IMAGE_TAG, then conf/images.yaml)",
    )


def _common(args: argparse.Namespace) -> dict:
    if not args.host:
        raise ConfigError(
            f"--host is required (or set {HOST_ENV}), e.g. --host http://localhost:8888"
        )
    return dict(
        host=args.host, experiment=args.experiment, params=args.param, namespace=args.namespace,
        service_account=args.service_account or None, enable_caching=False if args.no_cache else None,
        image_registry=args.image_registry, image_tag=args.image_tag,
    )  # fmt: skip


def _submit(args: argparse.Namespace) -> int:
    from docsort.components.k8s import use_profile
    from docsort.kfp import client as kfp_client

    with use_profile(args.k8s_profile):
        got = kfp_client.submit(args.pipeline, run_name=args.run_name, **_common(args))
    print(f"run {got.id} ({got.name}) submitted: {got.url}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from docsort.components.k8s import use_profile
    from docsort.kfp import client as kfp_client

    with use_profile(args.k8s_profile):
        got = kfp_client.schedule(
            args.pipeline, cron=args.cron, job_name=args.name, max_concurrency=args.max_concurrency,
            no_catchup=not args.catchup, **_common(args),
        )  # fmt: skip
    print(
        f"recurring run {got.id} ({got.name}, cron {kfp_client.validate_cron(args.cron)!r}) created: {got.url}"
    )
    return 0
