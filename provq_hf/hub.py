"""Model cards and Hub uploads for saved model folders (tokenizers and generators)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

logger = logging.getLogger(__name__)

METRICS_HEADING = "## Measured metrics"
PROTOCOL_HEADING = "## Evaluation protocol"


class HubUploadError(RuntimeError):
    """Raised when a folder could not be uploaded; the local copy is untouched."""


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def write_model_card(
    folder: str | os.PathLike,
    title: str,
    summary: str,
    settings: dict,
    metrics: dict | None = None,
    evaluation_protocol: str | None = None,
    usage: str | None = None,
    tags: tuple[str, ...] = ("provq", "image-tokenizer", "vector-quantization"),
) -> Path:
    """Write `folder/README.md`: YAML metadata, a summary, the settings table, metrics and protocol."""
    lines = ["---", "library_name: transformers", "tags:"]
    lines += [f"- {tag}" for tag in tags]
    lines += ["---", "", f"# {title}", "", summary, ""]
    if usage:
        lines += ["## Usage", "", "```python", usage.strip(), "```", ""]
    lines += ["## Training settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| `{key}` | {_format_value(value)} |" for key, value in settings.items()]
    lines.append("")
    lines += _evaluation_sections(metrics, evaluation_protocol)
    path = Path(folder) / "README.md"
    path.write_text("\n".join(lines))
    return path


def update_model_card_metrics(
    folder: str | os.PathLike, metrics: dict, evaluation_protocol: str | None = None
) -> Path:
    """Replace the metrics and evaluation-protocol sections of `folder/README.md`, keeping every other line.

    The card written by a training script keeps its title, usage example and settings, and a second
    refresh replaces the sections of the first one instead of appending duplicates.
    """
    path = Path(folder) / "README.md"
    if not path.is_file():
        raise FileNotFoundError(f"No model card at {str(path)!r}; write one with write_model_card first.")
    kept_lines, in_code_block, skipping = [], False, False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code_block = not in_code_block
        if line.startswith("## ") and not in_code_block:
            skipping = line.strip() in (METRICS_HEADING, PROTOCOL_HEADING)
        if not skipping:
            kept_lines.append(line)
    while kept_lines and not kept_lines[-1].strip():
        kept_lines.pop()
    path.write_text("\n".join(kept_lines + [""] + _evaluation_sections(metrics, evaluation_protocol)))
    return path


def _evaluation_sections(metrics: dict | None, evaluation_protocol: str | None) -> list[str]:
    lines = []
    if metrics:
        lines += [METRICS_HEADING, "", "| metric | value |", "|---|---|"]
        for key, value in metrics.items():
            if key == "feature_extractor" and isinstance(value, dict):
                # The extractor's name and accuracy, because scores from different extractors are not comparable.
                value = f"{value.get('name')} (test accuracy {_format_value(value.get('test_accuracy'))})"
            if not isinstance(value, dict):
                lines.append(f"| `{key}` | {_format_value(value)} |")
        lines.append("")
    if evaluation_protocol:
        lines += [PROTOCOL_HEADING, "", evaluation_protocol, ""]
    return lines


def read_metrics(folder: str | os.PathLike) -> dict | None:
    """Return `folder/metrics.json` if an evaluation wrote one there, else None."""
    path = Path(folder) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload a saved model folder to the Hub repo `repo_id` and return the commit URL.

    Fails fast with HubUploadError when offline mode is on (HF_HUB_OFFLINE=1) or the Hub cannot be
    reached. The token is passed through to huggingface_hub and never logged.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no config.json; save the model with save_pretrained first.")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise HubUploadError(
            f"Cannot push {str(folder)!r} to the Hub repo {repo_id!r}: HF_HUB_OFFLINE is set. The model is saved "
            f"locally; run `python scripts/push_to_hub.py --model_dir {folder} --hub_model_id {repo_id}` with network access."
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            commit_message="Upload ProVQ-HF model",
            ignore_patterns=["checkpoint-*", ".tmp-*", "logs/*"],
        )
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError) as error:
        raise HubUploadError(
            f"Upload of {str(folder)!r} to the Hub repo {repo_id!r} failed ({type(error).__name__}: {error}). "
            "The model is saved locally; check the network and your token (HF_TOKEN or `hf auth login`), "
            "then run scripts/push_to_hub.py."
        ) from error
    logger.info(f"Pushed {folder} to {repo_id}")
    return str(commit)


def push_folder_or_exit(folder: str | os.PathLike, repo_id: str, private: bool = False) -> str:
    """Run `push_folder_to_hub` for a command-line script: log the failure and exit with status 1."""
    try:
        return push_folder_to_hub(folder, repo_id, private=private)
    except HubUploadError as error:
        logger.error(str(error))
        raise SystemExit(1) from error
