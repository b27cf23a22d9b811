"""``--push_to_hub``: checked before training (hub reachable, a token), the run folder uploaded at the end.

What is uploaded: the export (LoRA with diffusers' metadata, peft's adapter files, the VAE part), the model card
``README.md``, ``bokehdiff_checkpoint.json``, the logs and ``training_curves.png``, the resolved config and
``validation/*.png``; never the resumable ``checkpoint-*`` folders or interrupted-save leftovers.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["UPLOAD_IGNORE", "HubTarget", "check_push_to_hub", "push_run", "upload_command"]

UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/**", ".tmp-*", ".old-*", ".del-*", ".*.tmp"]


class HubTarget:
    """Where ``--push_to_hub`` uploads: ``repo_id`` with ``token`` (``None``: huggingface_hub's stored one)."""

    def __init__(self, repo_id: str, token: str | None):
        self.repo_id, self.token = repo_id, token

    def __repr__(self) -> str:  # never the token
        return f"HubTarget({self.repo_id!r})"


def upload_command(run_dir: str | Path, repo_id: str) -> str:
    """The command that uploads a finished run later (``hf``, the CLI of the pinned huggingface_hub)."""
    excludes = " ".join(f"--exclude '{p}'" for p in UPLOAD_IGNORE)
    return f"hf upload {repo_id} {run_dir} . {excludes}"


def check_push_to_hub(args) -> HubTarget | None:
    """``None`` without ``--push_to_hub``; else the target, after checking (in seconds, before any training)
    that the hub answers (one probe, ``models.hub``) and that a token exists.

    Raises:
        ValueError: the hub is unreachable (or ``HF_HUB_OFFLINE`` is set), or there is no token; the message
            names the fix (drop the flag and upload later, log in, or ``--hub_token``).
    """
    if not args.push_to_hub:
        return None
    from models.hub import hub_endpoint, hub_unreachable_reason

    repo_id = args.hub_model_id or Path(args.output_dir).resolve().name
    reason = hub_unreachable_reason()
    if reason is not None:
        raise ValueError(
            f"--push_to_hub: the hub ({hub_endpoint()}) is unreachable ({reason}), so the run could not be uploaded "
            f"at the end. Train without --push_to_hub and upload the finished run where the hub is reachable "
            f"(`{upload_command(args.output_dir, repo_id)}`)")
    from huggingface_hub import get_token

    token = args.hub_token or get_token()
    if not token:
        raise ValueError("--push_to_hub: no hub token. Log in (`hf auth login`), set HF_TOKEN, or pass --hub_token")
    return HubTarget(repo_id, token)


def push_run(run_dir: str | Path, target: HubTarget) -> str:
    """Create ``target.repo_id`` (if needed) and upload the run folder; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=target.token)
    repo = api.create_repo(target.repo_id, exist_ok=True)
    commit = api.upload_folder(repo_id=repo.repo_id, folder_path=str(run_dir), ignore_patterns=UPLOAD_IGNORE,
                               commit_message="BokehDiff LoRA: export, model card and validation grids")
    return str(getattr(commit, "commit_url", commit))
