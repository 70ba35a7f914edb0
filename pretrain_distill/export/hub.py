"""``--push-to-hub REPO``: upload an export directory to the Hugging Face hub with ``huggingface_hub``."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi


def push_to_hub(folder: Path, repo_id: str, private: bool = False, message: str | None = None) -> str:
    """Create ``repo_id`` (if needed) and upload ``folder`` as one commit; returns the commit URL.

    Authentication is huggingface_hub's own (``HF_TOKEN`` or ``hf auth login``).
    """
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=message or f"Upload distilled student ({folder.name})",
    )
    return str(getattr(info, "commit_url", info))
