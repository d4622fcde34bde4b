"""Cluster tooling: DeepSpeed hostfiles and launch, Ray job submission, MLflow server, SLURM/K8s templates."""
