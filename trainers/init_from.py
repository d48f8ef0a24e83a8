"""Start a run from pretrained weights (stage 2 of the ladder): ``--init-from PATH | hf://owner/repo[/file]``.

Accepted sources, all read with ``torch.load(weights_only=True)``:

* a run folder of ``trainers.cva`` (its ``checkpoint.pt``) or that ``checkpoint.pt`` itself: the
  student's backbone (``student`` entries under ``backbone.``);
* an nnssl-format checkpoint (``network_weights`` + ``nnssl_adaptation_plan``): our ``--export`` or
  nnssl's own pretraining checkpoints (``module.`` / ``_orig_mod.`` prefixes of DDP / compile dropped);
* ``hf://owner/repo[/path/in/repo]``: a Hugging Face model repo (the OpenMind benchmark publishes
  its nnssl MAE checkpoints there), fetched through ``openmind_prep.sources.hub`` with its sha256 checked
  against the hub's LFS record; without a path, the repo's one ``.pt``/``.pth`` file.

The backbone is loaded strictly: every backbone key must be present with its shape, and no
unknown key may be left over, except the MAE-only parts of a Primus MAE (its Eva decoder and mask
token), which an export of the bare encoder does not have. The CVA heads are not loaded (they stay
freshly initialised), nor, unless asked, the reconstruction head (``.seg_layers.``, skipped as the
fork's ``load_pretrained_weights`` does); the caller copies the student into the teacher and starts the
schedules at 0.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["HF_PREFIX", "split_hf", "fetch_hf", "read_backbone_weights", "load_backbone", "init_backbone"]

HF_PREFIX = "hf://"
OPTIONAL_PREFIXES = ("decoder.", "mask_token")  # a Primus MAE's decoder: absent from a bare encoder export
RECON_HEAD = ".seg_layers."  # the output convolution nnssl / the fork leave fresh when fine-tuning from weights


def split_hf(spec: str) -> tuple[str, str | None]:
    """``hf://owner/repo[/file]`` → (repo id, file or None).

    >>> split_hf("hf://AnonRes/ResEncL-OpenMind-MAE")
    ('AnonRes/ResEncL-OpenMind-MAE', None)
    >>> split_hf("hf://a/b/sub/ckpt.pth")
    ('a/b', 'sub/ckpt.pth')
    """
    parts = spec[len(HF_PREFIX):].strip("/").split("/")
    if not spec.startswith(HF_PREFIX) or len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"{spec}: expected hf://owner/repo[/file]")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def fetch_hf(spec: str, dest: Path, *, endpoint: str | None = None, token: str | bool | None = None,
             deadline_s: float | None = None) -> Path:
    """Download the checkpoint ``spec`` names into ``dest`` (verified, resumable); returns its local path.
    ``deadline_s`` bounds the whole fetch (retries included; ``--hub-deadline``); a dead endpoint, a missing
    repo or a deadline passed is a :class:`~openmind_prep.sources.retry.DownloadError` (one line)."""
    import time

    from huggingface_hub import HfApi

    from openmind_prep.sources.hub import HubRepo, RetryPolicy, VerifiedState, fetch_verified

    repo_id, file = split_hf(spec)
    policy = RetryPolicy(deadline=None if deadline_s is None else time.time() + deadline_s)
    repo = HubRepo(repo_id, endpoint=endpoint, token=token, repo_type="model", policy=policy)
    commit = repo.resolve_commit()
    if file is None:
        files = repo.ask(lambda: HfApi(endpoint=endpoint, token=token).list_repo_files(
            repo_id, repo_type="model", revision=commit), spec, repo.api_url("tree", commit))
        candidates = sorted(f for f in files if f.endswith((".pt", ".pth")))
        if len(candidates) != 1:
            raise ValueError(f"{spec}: name the checkpoint file, the repo holds {len(candidates)} .pt/.pth files "
                             f"({', '.join(candidates[:5]) or 'none'})")
        file = candidates[0]
    remote = repo.paths_info(commit, [file])[0]
    local = Path(dest) / repo_id.replace("/", "--") / file
    fetch_verified(repo, commit, remote, local, Path(dest), VerifiedState(Path(dest)))
    return local


def read_backbone_weights(path: Path) -> dict[str, torch.Tensor]:
    """The backbone state dict stored in a run folder, a ``checkpoint.pt`` or an nnssl-format checkpoint
    (:mod:`trainers.weights`, the reader the tissue probe uses too).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x.pth"
    >>> torch.save({"network_weights": {"module.w": torch.ones(1)}}, p)
    >>> read_backbone_weights(p)
    {'w': tensor([1.])}
    """
    from trainers.weights import backbone_weights, read_checkpoint

    return backbone_weights(*read_checkpoint(path))


def load_backbone(backbone: nn.Module, weights: dict[str, torch.Tensor], source: str,
                  recon_head: bool = True) -> list[str]:
    """Copy ``weights`` into ``backbone`` strictly (see the module docstring); returns the keys loaded.
    ``recon_head=False`` leaves the reconstruction head (``.seg_layers.``) as initialised, as the fork's
    ``load_pretrained_weights`` (its keys must still fit).

    >>> from trainers.networks import tiny
    >>> a, b = tiny(), tiny()
    >>> n = len(load_backbone(b, a.state_dict(), "a"))
    >>> n == len(a.state_dict()) and torch.equal(a.encoder.stem.convs[0].conv.weight, b.encoder.stem.convs[0].conv.weight)
    True
    """
    own = backbone.state_dict()
    missing = [k for k in own if k not in weights and not k.startswith(OPTIONAL_PREFIXES)]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k in own if k in weights and tuple(weights[k].shape) != tuple(own[k].shape)]
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            raise ValueError(f"{source}: does not fit this backbone, {len(keys)} {what} key(s): {shown}")
    loaded = [k for k in own if k in weights and (recon_head or RECON_HEAD not in f".{k}")]
    backbone.load_state_dict({k: weights[k] for k in loaded}, strict=False)
    return loaded


def init_backbone(backbone: nn.Module, source: str, *, cache: Path, endpoint: str | None = None,
                  deadline_s: float | None = None, recon_head: bool = True) -> list[str]:
    """Resolve ``source`` (path or ``hf://``, fetched within ``deadline_s``), read its backbone weights and
    load them; returns the keys loaded. A source that cannot be fetched or does not fit: ``ValueError``."""
    from openmind_prep.sources.retry import DownloadError

    try:
        path = fetch_hf(source, cache, endpoint=endpoint, deadline_s=deadline_s) if source.startswith(HF_PREFIX) \
            else Path(source)
    except DownloadError as e:
        raise ValueError(str(e)) from e
    return load_backbone(backbone, read_backbone_weights(path), source, recon_head=recon_head)
