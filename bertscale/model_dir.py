"""The model directory: the one format in which every job writes and reads a BERT.

Layout (pretraining's step dirs, fine-tuned models and imported checkpoints all share it)::

    model.safetensors     weights, HF keys (tied copies dropped: readers restore them)
    bert_config.json      BertConfig.to_hf_dict()
    tokenizer.model       the tokenizer's files (kind ``sentencepiece``: the pipeline's model; kind
                          ``huggingface``: tokenizer.json, e.g. a published BERT's WordPiece)
    ...                   what the writer adds (config.yaml, head.json, trainer_state.json, deepspeed/)

Where a model directory is found: a pretrain run dir or its ``checkpoints/`` dir stand for the step
dir named in ``checkpoints/latest``; a DeepSpeed ZeRO dir (``step_N/deepspeed``, one of its tag dirs,
or a bare DeepSpeed save dir) stands for the step dir that holds it, its weights consolidated to
fp32. DeepSpeed's files are pickles it loads with ``weights_only=False``: every DeepSpeed load runs
inside :func:`weights_only_loading`, so only tensors, containers and three plain DeepSpeed record
types can be unpickled.

Public API:
    Tokenizer(kind, files); Tokenizer.from_path(path); find_tokenizer(directory) -> Tokenizer | None
    check_tokenizer_fits(where, tokens, vocab_size)   CheckpointError if the tokenizer's ids overflow the model
    write_model_dir(directory, config, state_dict, tokenizer=None, config_name=CONFIG) -> None
    save_model_dir(out, config, state_dict, tokenizer=None, config_name=CONFIG) -> Path   atomic
    step_dir_name(step), latest_step_dir(checkpoints_dir), resolve_step_dir(path) -> Path
    load_pretrained(path) -> Pretrained(config, state_dict, tokenizer, step_dir)   resolves, tied keys restored
    read_hf_checkpoint(hf_dir) -> (BertConfig, state_dict)   a transformers dir, BertForPreTraining keys
    read_model_dir(directory) -> Pretrained                a model dir as written, nothing resolved
    read_config(directory) -> BertConfig; load_safetensors(path) -> state_dict
    weights_only_loading(where)      context: DeepSpeed's torch.load made weights-only
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bertscale.atomic import atomic_directory
from bertscale.data_pipeline.schema import HF_TOKENIZER_NAME, TOKENIZER_NAME
from bertscale.errors import CheckpointError
from bertscale.model import TIED_WEIGHTS, BertConfig, hf_state_dict

WEIGHTS = "model.safetensors"
CONFIG = "bert_config.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
DEEPSPEED = "deepspeed"  # the DeepSpeed engine checkpoint inside a pretrain step dir
STEP_DIR = re.compile(r"^step_(\d{8})$")
# transformers' layout (a published BERT, or our export)
HF_CONFIG, HF_WEIGHTS, HF_INDEX, HF_BIN = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
)
BUFFERS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")  # older HF files carry them
StateDict = dict[str, torch.Tensor]

# The files each tokenizer kind consists of, the first being the one its loader opens.
TOKENIZER_FILES: dict[str, tuple[str, ...]] = {
    "sentencepiece": (TOKENIZER_NAME,),
    "huggingface": (HF_TOKENIZER_NAME,),  # a `tokenizers` JSON, e.g. a published BERT's WordPiece
}


# --- tokenizer -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tokenizer:
    """A tokenizer as files on disk: ``kind`` (a key of TOKENIZER_FILES) and its files."""

    kind: str
    files: tuple[Path, ...]

    @property
    def path(self) -> Path:
        """The file the loader of this kind opens."""
        return self.files[0]

    @classmethod
    def from_path(cls, path: str | Path) -> Tokenizer:
        """A tokenizer named by one of its files (e.g. a user's ``model.tokenizer``)."""
        path = Path(path)
        if path.is_dir() and (path / HF_TOKENIZER_NAME).is_file():  # a HuggingFace tokenizer directory
            return cls("huggingface", (path / HF_TOKENIZER_NAME,))
        if path.suffix == ".json":
            return cls("huggingface", (path,))
        if path.suffix == ".model":
            return cls("sentencepiece", (path,))
        raise CheckpointError(
            f"{path}: not a tokenizer this project reads (a SentencePiece .model, a tokenizer.json "
            "or a directory holding one)"
        )


def find_tokenizer(directory: Path) -> Tokenizer | None:
    """The tokenizer stored in ``directory`` itself (never a parent's), or None."""
    for kind, names in TOKENIZER_FILES.items():
        if all((directory / name).is_file() for name in names):
            return Tokenizer(kind, tuple(directory / name for name in names))
    return None


def check_tokenizer_fits(where: str | Path, tokens: int, vocab_size: int) -> None:
    """A tokenizer of ``tokens`` ids may be smaller than the embedding table (transformers allows a
    padded vocabulary), never larger: its top ids would index past the word embeddings."""
    if tokens > vocab_size:
        raise CheckpointError(
            f"{where}: the tokenizer has {tokens} tokens but the model's vocab_size is {vocab_size}: "
            f"ids {vocab_size}-{tokens - 1} have no embedding (use the tokenizer the model was trained with)"
        )


def _copy_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    for source, name in zip(tokenizer.files, TOKENIZER_FILES[tokenizer.kind], strict=True):
        shutil.copyfile(source, directory / name)


# --- writing -------------------------------------------------------------------------------------


def write_model_dir(
    directory: Path,
    config: BertConfig,
    state_dict: Mapping[str, torch.Tensor],
    tokenizer: Tokenizer | None = None,
    config_name: str = CONFIG,
) -> None:
    """Write weights, config and tokenizer into ``directory`` (a temp dir the caller publishes).

    ``config_name`` is ``config.json`` for transformers' layout (bertscale.finetune.export).
    """
    # safetensors refuses tensors that share memory: tied copies are dropped, readers restore them
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if k not in TIED_WEIGHTS}
    save_file(tensors, directory / WEIGHTS, metadata={"format": "pt"})
    (directory / config_name).write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n", encoding="utf-8")
    if tokenizer is not None:
        _copy_tokenizer(tokenizer, directory)


def save_model_dir(
    out: str | Path,
    config: BertConfig,
    state_dict: Mapping[str, torch.Tensor],
    tokenizer: Tokenizer | None = None,
    config_name: str = CONFIG,
    owned: Callable[[str], bool] | None = None,
) -> Path:
    """:func:`write_model_dir` into ``out``, atomically: an existing ``out`` is replaced, or with
    ``owned`` (a user's directory) only the files it claims are (see ``atomic_directory``)."""
    out = Path(out)
    with atomic_directory(out, owned) as tmp:
        write_model_dir(tmp, config, state_dict, tokenizer, config_name)
    return out


# --- finding -------------------------------------------------------------------------------------


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def latest_step_dir(checkpoints_dir: Path) -> Path | None:
    """The dir named in ``checkpoints_dir/latest``; None when there is no ``latest``."""
    latest = checkpoints_dir / LATEST
    if not latest.is_file():
        return None
    step_dir = checkpoints_dir / latest.read_text(encoding="utf-8").strip()
    if not step_dir.is_dir():
        raise CheckpointError(f"{latest}: names '{step_dir.name}', which does not exist")
    return step_dir


def resolve_step_dir(path: Path) -> Path:
    """The step dir a run dir, ``checkpoints/`` dir (both via ``latest``), step dir or file in it stands for."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_file():
        path = path.parent
    if (path / CHECKPOINTS).is_dir():
        path = path / CHECKPOINTS
    if (path / LATEST).is_file() and not (path / WEIGHTS).exists():
        step_dir = latest_step_dir(path)
        if step_dir is not None and STEP_DIR.match(step_dir.name):
            return step_dir
    return path


@dataclass(frozen=True)
class _Location:
    step_dir: Path  # where the config and the tokenizer are
    zero_dir: Path | None  # a DeepSpeed save dir to consolidate (no model.safetensors)
    zero_tag: str | None  # None: the save dir's ``latest``


def _locate(given: Path) -> _Location:
    path = resolve_step_dir(given)
    if (path / WEIGHTS).is_file():
        return _Location(path, None, None)
    if (path / DEEPSPEED).is_dir():
        return _Location(path, path / DEEPSPEED, None)
    if any(path.glob("*model_states.pt")):  # a tag dir of a DeepSpeed save dir
        zero, tag = path.parent, path.name
    elif (path / LATEST).is_file():  # a DeepSpeed save dir
        zero, tag = path, None
    else:
        raise CheckpointError(f"{given}: neither model.safetensors nor a DeepSpeed checkpoint found")
    # ours sits in a step dir as deepspeed/; a bare DeepSpeed dir must hold the config itself
    return _Location(zero.parent if zero.name == DEEPSPEED else zero, zero, tag)


# --- reading -------------------------------------------------------------------------------------


@dataclass
class Pretrained:
    """What a model directory holds, read once: callers need not re-resolve paths."""

    config: BertConfig
    # fp32, HF keys of BertForPreTraining (a bare encoder: bert.* only), tied keys included
    state_dict: StateDict
    tokenizer: Tokenizer | None
    step_dir: Path  # the model directory itself (for a ZeRO dir: the step dir holding it)


def load_pretrained(path: str | Path) -> Pretrained:
    """Config, weights and tokenizer from a run dir, ``checkpoints/``, step dir, ZeRO dir, model dir or
    transformers directory (``config.json``; BertModel or BertForPreTraining keys, heads or not)."""
    given = Path(path)
    if (given / HF_CONFIG).is_file() and not (given / CONFIG).is_file():
        config, state = read_hf_checkpoint(given)
        where = _Location(given, None, None)
    else:
        where = _locate(given)
        zero = where.zero_dir is not None
        state = _load_zero(where.zero_dir, where.zero_tag) if zero else load_safetensors(where.step_dir / WEIGHTS)
        config = read_config(where.step_dir, given)
    for key, source in TIED_WEIGHTS.items():
        if key not in state and source in state:
            state[key] = state[source]
    return Pretrained(config, state, find_tokenizer(where.step_dir), where.step_dir)


def read_model_dir(directory: Path) -> Pretrained:
    """A model directory exactly as :func:`write_model_dir` left it (no path resolution, tied keys absent)."""
    state = load_safetensors(directory / WEIGHTS)
    return Pretrained(read_config(directory), state, find_tokenizer(directory), directory)


def read_config(directory: Path, given: Path | None = None, name: str = CONFIG) -> BertConfig:
    """The BertConfig in ``directory``; errors name ``given`` (what the user passed) when it lacks one."""
    config_file = directory / name
    if not config_file.is_file():
        raise CheckpointError(f"{given or directory}: no {name} beside the weights")
    try:
        hf = json.loads(config_file.read_text(encoding="utf-8"))
    except OSError as err:
        raise CheckpointError(f"{config_file}: unreadable ({err})") from None
    except ValueError as err:
        raise CheckpointError(f"{config_file}: not valid JSON ({err})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object")
    return BertConfig.from_hf_dict(hf, source=str(config_file))


def load_safetensors(path: Path) -> StateDict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors file ({err})") from None


def _load_zero(zero_dir: Path, tag: str | None) -> StateDict:
    """fp32 weights consolidated from a DeepSpeed ZeRO checkpoint (any stage, any world size)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        with weights_only_loading(zero_dir):
            # keys are parameter names there (the fused qkv): HuggingFace's, as everywhere else
            return hf_state_dict(get_fp32_state_dict_from_zero_checkpoint(str(zero_dir), tag=tag))
    except CheckpointError:
        raise
    except Exception as err:  # DeepSpeed raises bare ValueError/FileNotFoundError/AssertionError
        raise CheckpointError(
            f"{zero_dir}: unreadable DeepSpeed ZeRO checkpoint ({type(err).__name__}: {err})"
        ) from None


@contextlib.contextmanager
def weights_only_loading(where: str | Path) -> Iterator[None]:
    """Make DeepSpeed's ``torch.load(..., weights_only=False)`` calls weights-only while active."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    unsafe_load = torch.load

    def load(f, map_location=None, weights_only=None, **kwargs):  # weights_only is always True here
        with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
            return unsafe_load(f, map_location=map_location, weights_only=True, **kwargs)

    torch.load = load
    try:
        yield
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{where}: refused by weights-only loading ({first})") from None
    finally:
        torch.load = unsafe_load


# --- transformers' directories --------------------------------------------------------------


def read_hf_checkpoint(hf_dir: str | Path) -> tuple[BertConfig, StateDict]:
    """Config and weights of a transformers BERT directory, as BertForPreTraining keys.

    Accepts BertForPreTraining and BertModel checkpoints (the latter without ``bert.`` prefix and
    without heads: the returned state then has only ``bert.*`` keys), in ``model.safetensors``,
    a sharded safetensors index, or ``pytorch_model.bin`` (read with ``weights_only=True``).
    """
    root = Path(hf_dir)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory (expected a transformers checkpoint directory)")
    return read_config(root, name=HF_CONFIG), _normalise_keys(_read_weights(root))


def _read_weights(root: Path) -> StateDict:
    if (root / HF_WEIGHTS).is_file():
        return load_safetensors(root / HF_WEIGHTS)
    if (root / HF_INDEX).is_file():
        try:
            weight_map = json.loads((root / HF_INDEX).read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{root / HF_INDEX}: unreadable index ({err})") from None
        state: StateDict = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_safetensors(root / shard))
        return state
    if (root / HF_BIN).is_file():
        try:  # weights_only: a pickle from the internet must not run code
            state = torch.load(root / HF_BIN, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
            raise CheckpointError(
                f"{root / HF_BIN}: not a loadable weights-only state dict ({err})"
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{root / HF_BIN}: expected a dict of tensors")
        return state
    raise CheckpointError(f"{root}: no {HF_WEIGHTS}, {HF_INDEX} or {HF_BIN}")


def _normalise_keys(state: StateDict) -> StateDict:
    """BertModel keys get the ``bert.`` prefix; TF-era LayerNorm ``gamma``/``beta`` become weight/bias."""
    bare = not any(key.startswith(("bert.", "cls.")) for key in state)
    out = {}
    for key, value in state.items():
        if key.endswith("LayerNorm.gamma"):
            key = key.removesuffix("gamma") + "weight"
        elif key.endswith("LayerNorm.beta"):
            key = key.removesuffix("beta") + "bias"
        if bare:
            key = f"bert.{key}"
        if key not in BUFFERS:
            out[key] = value
    return out
